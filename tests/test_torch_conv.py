"""`layers.utils.torch_conv_nhwc` on torch: the convolution each route
reaches (zero taps instead of a padded copy for stride-2 depthwise layers
with TensorFlow SAME padding; compiled 1x1 convolutions as a
GEMM or as ATen's convolution by batch), checked against the plain
`F.pad` + `F.conv2d` it replaces."""

import re

import numpy as np
import pytest
from conftest import BACKEND, random_images, to_numpy

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch's convolution routes")


def plain_same_conv(x, weight, stride, groups):
    """TensorFlow SAME padding as an explicit `F.pad`, then `F.conv2d`."""
    import torch.nn.functional as F

    from keras_mobilenets.layers.utils import same_pads

    nchw = x.permute(0, 3, 1, 2)
    (top, bottom), (left, right) = (same_pads(size, weight.shape[-1], stride)
                                    for size in nchw.shape[2:])
    y = F.conv2d(F.pad(nchw, (left, right, top, bottom)), weight, stride=stride, groups=groups)
    return y.permute(0, 2, 3, 1)


def aten_ops(fn):
    """Result of `fn()` and the ATen operators it called, with their first argument's shape."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            first = args[0] if args else None
            calls.append((str(func.overloadpacket), tuple(getattr(first, "shape", ()))))
            return func(*args, **(kwargs or {}))

    with Record():
        out = fn()
    return out, calls


@pytest.mark.parametrize("size, kernel, multiplier", [(8, 3, 1), (9, 3, 1), (8, 5, 2), (10, 5, 1)])
def test_depthwise_same_padding_convolves_without_a_padded_copy(size, kernel, multiplier):
    """At stride 2 TensorFlow SAME pads one pixel more after than before. The
    kernel gets zeros in front instead, and the convolution
    pads symmetrically itself: the same output, and no padded copy of the
    feature map (it was written on every call)."""
    import torch

    from keras_mobilenets.layers.utils import torch_conv_nhwc

    rng = np.random.default_rng(0)
    channels = 4
    x = torch.as_tensor(rng.normal(size=(2, size, size, channels)).astype("float32"))
    w = torch.as_tensor(rng.normal(size=(channels * multiplier, 1, kernel, kernel))
                        .astype("float32"))
    with torch.no_grad():
        out, calls = aten_ops(lambda: torch_conv_nhwc(x, w, None, 2, "same"))
        expected = plain_same_conv(x, w, 2, channels)
    np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-5, atol=1e-5)
    padded_inputs = [c for c in calls if c[0] == "aten.constant_pad_nd" and len(c[1]) == 4
                     and c[1][0] == 2]
    assert not padded_inputs, calls
    assert any(c[0] == "aten.convolution" for c in calls)


def test_dense_convolutions_keep_the_padded_copy():
    """The stems (dense convolutions) keep `F.pad`: zero taps there cost more
    products than the copy saves."""
    import torch

    from keras_mobilenets.layers.utils import torch_conv_nhwc

    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(2, 8, 8, 3)).astype("float32"))
    w = torch.as_tensor(rng.normal(size=(5, 3, 3, 3)).astype("float32"))
    with torch.no_grad():
        out, calls = aten_ops(lambda: torch_conv_nhwc(x, w, None, 2, "same"))
    np.testing.assert_allclose(to_numpy(out), to_numpy(plain_same_conv(x, w, 2, 1)),
                               rtol=1e-5, atol=1e-5)
    assert ("aten.constant_pad_nd", (2, 3, 8, 8)) in calls


def test_trained_depthwise_zero_taps_give_the_padded_gradients():
    """In training too: the input's and the kernel's gradients are those of
    `F.pad` + `F.conv2d`, and no padded copy is made or kept."""
    import torch

    from keras_mobilenets.layers.utils import torch_conv_nhwc

    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    w0 = rng.normal(size=(6, 1, 3, 3)).astype("float32")  # multiplier 2
    g = torch.as_tensor(rng.normal(size=(2, 4, 4, 6)).astype("float32"))
    results = []
    for conv in (lambda x, w: torch_conv_nhwc(x, w, None, 2, "same"),
                 lambda x, w: plain_same_conv(x, w, 2, 3)):
        x = torch.tensor(x0, requires_grad=True)
        w = torch.tensor(w0, requires_grad=True)
        y, calls = aten_ops(lambda conv=conv, x=x, w=w: conv(x, w))
        (y * g).sum().backward()
        results.append(([to_numpy(t.detach()) for t in (y, x.grad, w.grad)], calls))
    (ours, ours_calls), (plain, _) = results
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not [c for c in ours_calls if c[0] == "aten.constant_pad_nd" and c[1][0] == 2]


@pytest.mark.parametrize("batch, route", [(2, "mm"), (16, "convolution")])
def test_compiled_pointwise_convolution_route_by_batch(batch, route):
    """Compiled, a 1x1 convolution is one GEMM below batch 16 and ATen's
    convolution (oneDNN) from 16 on, where that was twice as fast as the
    GEMM on an AMD EPYC (docs/torch_backend.md); both give the eager output."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from keras_mobilenets.layers import ConvBnAct, utils

    assert utils.ONEDNN_POINTWISE_BATCH == 16
    layer = ConvBnAct(8, 1, 1, activation="relu")
    x = torch.as_tensor(random_images(batch, 6, 6))
    layer.build(x.shape)
    layer.bn.moving_mean.assign(np.linspace(-1, 1, 8).astype("float32"))
    with torch.no_grad():
        eager = to_numpy(layer(x, training=False))
        torch._dynamo.reset()
        compiled = torch.compile(lambda a: layer(a, training=False))
        out, (code, *_) = run_and_get_code(compiled, x)
    np.testing.assert_allclose(to_numpy(out), eager, rtol=1e-5, atol=1e-5)
    externs = set(re.findall(r"extern_kernels\.(\w+)\(", code))
    assert route in externs, externs
    assert not externs & ({"mm", "convolution"} - {route}), externs
