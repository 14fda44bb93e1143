"""Inductor's memory layouts in compiled inference on torch (CPU): the
buffers of the generated code keep this library's channels-last tensors
channels-last, with the height never innermost (the layouts and their cost:
docs/torch_backend.md)."""

import numpy as np
import pytest
from conftest import BACKEND, random_images, to_numpy

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch.compile's generated code")


def test_compiled_inference_keeps_feature_maps_channels_last():
    """Compiled on CPU, Inductor stores a feature map that is read twice (as
    by hard-swish) and leads to a convolution with the channels-last
    strides of an NCHW tensor, computed from the shape it sees. For a
    channels-last tensor that is a layout with the height innermost: V3
    small's scaled 1x1 outputs were written through 8x8 transposes and read
    back the same way (docs/torch_backend.md). The 1x1 convolution's
    BatchNorm and activation are therefore written on the NCHW view. Checks
    the buffers of the generated code, and the output."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from keras_mobilenets.layers import ConvBnAct

    pointwise = ConvBnAct(16, 1, 1, activation="hard_swish")
    depthwise = ConvBnAct(16, 3, 2, depthwise=True, activation="relu")
    x = torch.as_tensor(random_images(2, 12, 12))
    pointwise.build(x.shape)
    depthwise.build((2, 12, 12, 16))
    for layer in (pointwise, depthwise):  # BatchNorm statistics that change the output
        layer.bn.moving_mean.assign(np.linspace(-1, 1, 16).astype("float32"))
        layer.bn.moving_variance.assign(np.linspace(0.5, 2, 16).astype("float32"))
    with torch.no_grad():
        eager = to_numpy(depthwise(pointwise(x, training=False), training=False))
        torch._dynamo.reset()
        compiled = torch.compile(lambda a: depthwise(pointwise(a, training=False), training=False))
        out, (code, *_) = run_and_get_code(compiled, x)
    np.testing.assert_allclose(to_numpy(out), eager, rtol=1e-5, atol=1e-5)
    shapes = _buffers(code)
    assert shapes, "no buffer allocations found in the generated code"
    # (batch, height, width, 16) with the height's stride 1; NCHW-shaped
    # buffers have the 16 channels second (no spatial size here is 16)
    height_innermost = [(size, stride) for size, stride in shapes
                        if len(size) == 4 and size[3] == 16 and stride[1] == 1]
    assert not height_innermost, height_innermost


def _buffers(code):
    """(size, strides) of every buffer Inductor's generated `code`
    allocates or reinterprets."""
    import re

    found = re.findall(r"(?:empty_strided\w*|reinterpret_tensor)\((?:\w+, )?\(([\d, ]+)\), "
                       r"\(([\d, ]+)\)", code)
    return [([int(v) for v in size.split(",") if v.strip()],
             [int(v) for v in stride.split(",") if v.strip()]) for size, stride in found]


def test_compiled_inference_stores_block_outputs_channels_last():
    """A block's output is read by the next block and by its residual sum,
    an attention block's normalised input by its three projections: Inductor
    stored such tensors with the height innermost (the channels-last strides
    of an NCHW tensor of their NHWC shape) and copied them back for each
    convolution. `layers.utils.stored_as_nhwc` fixes their strides. Checks
    every 4-D buffer of the generated code, and the output."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from keras_mobilenets.layers import MobileMQA, UniversalInvertedBottleneck

    x = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 16)).astype("float32"))
    blocks = [UniversalInvertedBottleneck(16, expansion=2.0, layer_scale_init=0.5, name="uib"),
              MobileMQA(2, 8, kv_strides=2, layer_scale_init=0.5, name="mqa")]
    shape = tuple(x.shape)
    for block in blocks:
        block.build(shape)
        for layer in block._flatten_layers(include_self=False):
            if hasattr(layer, "moving_variance"):  # statistics that change the output
                layer.moving_variance.assign(np.linspace(0.5, 2, layer.moving_variance.shape[0]))

    def forward(a):
        for block in blocks:
            a = block(a, training=False)
        return a

    with torch.no_grad():
        eager = to_numpy(forward(x))
        torch._dynamo.reset()
        out, (code, *_) = run_and_get_code(torch.compile(forward), x)
    np.testing.assert_allclose(to_numpy(out), eager, rtol=1e-5, atol=1e-5)
    maps = [(size, stride) for size, stride in _buffers(code) if len(size) == 4 and size[3] == 16]
    assert maps, "no (batch, 8, 8, 16) buffers found in the generated code"
    height_innermost = [(size, stride) for size, stride in maps if stride[1] == 1]
    assert not height_innermost, height_innermost
