"""TensorFlow with its oneDNN graph optimisations on (`TF_ENABLE_ONEDNN_OPTS=1`,
TensorFlow's default on CPUs with AVX-512 VNNI or AMX): its remapper fuses a
depthwise convolution with the bias add after it and lost explicit
paddings on the way, aborting the process in V4's compiled inference
(`layers/utils.py: _tf_conv_nhwc`)."""

import json
import textwrap

import keras
import numpy as np
import pytest
from background import finish, start, subprocess_env
from conftest import BACKEND

from keras_mobilenets import create_mobilenetv4

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graph optimiser")

PREDICT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import keras
    import numpy as np
    from keras_mobilenets import create_mobilenetv4

    keras.utils.set_random_seed(0)
    model = create_mobilenetv4("conv_small", input_shape=(64, 64, 3), num_classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    print(json.dumps(model.predict_on_batch(x).tolist()))
    """
)


def test_v4_compiled_inference_with_onednn_optimisations():
    """Stride-1 depthwise layers (SAME is their symmetric padding) and
    stride-2 ones at even sizes (padded copy) both run under the remapper,
    and give what this process gives."""
    proc = start(PREDICT_SCRIPT, [], {**subprocess_env("tensorflow"),
                                     "TF_ENABLE_ONEDNN_OPTS": "1"})
    keras.utils.set_random_seed(0)
    model = create_mobilenetv4("conv_small", input_shape=(64, 64, 3), num_classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = model.predict_on_batch(x)
    got = np.array(json.loads(finish(proc, "predicting with oneDNN optimisations").splitlines()[-1]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size, kernel, stride", [(8, 3, 2), (9, 3, 2), (8, 5, 2), (8, 3, 1)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("onednn", [False, True])
def test_depthwise_symmetric_padding_without_explicit_paddings(size, kernel, stride, bias,
                                                                onednn, monkeypatch):
    """With the oneDNN optimisations on, a depthwise convolution followed by
    a bias add is SAME (where that is symmetric) or a padded copy, not
    explicit paddings; each form gives the explicitly padded output."""
    import tensorflow as tf

    from keras_mobilenets.layers import utils
    from keras_mobilenets.layers.utils import _tf_conv_nhwc

    if not onednn and utils._tf_onednn_enabled():
        pytest.skip("explicit paddings with a bias add abort with this process's optimisations")
    monkeypatch.setattr(utils, "_tf_onednn_enabled", lambda: onednn)

    rng = np.random.default_rng(size + kernel)
    x = tf.constant(rng.normal(size=(2, size, size, 4)).astype("float32"))
    k = tf.constant(rng.normal(size=(kernel, kernel, 4, 2)).astype("float32"))
    b = tf.constant(rng.normal(size=(8,)).astype("float32")) if bias else None
    pad = kernel // 2
    graph = tf.function(lambda x: _tf_conv_nhwc(True, x, k, stride, pad, b))
    got = graph(x)
    ops_ = {op.type: op for op in graph.get_concrete_function(x).graph.get_operations()}
    explicit = ops_["DepthwiseConv2dNative"].get_attr("padding") == b"EXPLICIT"
    assert explicit == (not (onednn and bias)), ops_["DepthwiseConv2dNative"].get_attr("padding")
    expected = tf.nn.depthwise_conv2d(x, k, (1, stride, stride, 1),
                                      [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    if bias:
        expected = expected + b
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
