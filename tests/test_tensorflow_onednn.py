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


FUSION_SCRIPT = textwrap.dedent(
    """
    import collections, json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.eager import context
    from keras_mobilenets import create_mobilenetv2, create_mobilenetv3
    from keras_mobilenets.layers import HardSigmoid

    def executed(fn, *args):
        # The graph TensorFlow ran, after its optimisers: recorded when the
        # function first runs.
        context.context().enable_run_metadata()
        fn(*args).numpy()
        metadata = context.context().export_run_metadata()
        context.context().disable_run_metadata()
        nodes = [n for g in metadata.partition_graphs for n in g.node]
        ops = collections.Counter(n.op for n in nodes)
        fused = collections.Counter("+".join(s.decode() for s in n.attr["fused_ops"].list.s)
                                    for n in nodes if "Fused" in n.op)
        return dict(ops=ops, fused=fused)

    # What this TensorFlow fuses at all: the textbook patterns, written with its own ops.
    rng = np.random.default_rng(0)
    k1, k2 = (tf.Variable(rng.normal(size=(1, 1, 8, 8)).astype("float32")) for _ in "12")
    b1, b2 = (tf.Variable(rng.normal(size=(8,)).astype("float32")) for _ in "12")

    @tf.function
    def probe(y):
        h = tf.nn.bias_add(tf.nn.conv2d(y, k1, 1, "SAME"), b1)
        h = h * (tf.nn.relu6(h + 3.0) / 6.0)
        return tf.nn.bias_add(tf.nn.conv2d(h, k2, 1, "SAME"), b2) + h

    counts = {"probe": executed(probe, tf.constant(rng.normal(size=(2, 8, 8, 8)).astype("float32")))}
    x = tf.constant(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    for name, model in (("v3", create_mobilenetv3("small", input_shape=(64, 64, 3))),
                        ("v2", create_mobilenetv2("1.0", input_shape=(64, 64, 3)))):
        counts[name] = executed(tf.function(lambda x: model(x, training=False)), x)
        counts[name]["gates"] = sum(isinstance(layer, HardSigmoid)
                                    for layer in model._flatten_layers())
    print(json.dumps(counts))
    """
)


def test_inference_graph_fuses_bias_hard_swish_and_residual_sum():
    """In inference TensorFlow's remapper (oneDNN) fuses each convolution
    with its folded-BatchNorm bias and what follows: V3's hard-swish and a
    block's residual sum, where it fuses those patterns written with its own
    ops (a probe in the same process). Left are only the squeeze-excite
    gates' ReLU6 (hard-sigmoid) and the head's, and no convolution runs
    unfused: before the bias became a `BiasAdd`, V3 small ran each
    hard-swish as separate ops and the residual sums as `AddN` beside
    unfused projections (layers/utils.py)."""
    proc = start(FUSION_SCRIPT, [], {**subprocess_env("tensorflow"),
                                     "TF_ENABLE_ONEDNN_OPTS": "1"})
    counts = json.loads(finish(proc, "tracing with oneDNN optimisations").splitlines()[-1])
    probe = counts.pop("probe")["fused"]
    swish, residual = "BiasAdd+_FusedHardSwish" in probe, "BiasAdd+Add" in probe
    if not (swish or residual):
        pytest.skip(f"this TensorFlow fuses neither pattern (probe: {probe})")
    for name, found in counts.items():
        ops, fused = found["ops"], found["fused"]
        unfused = {op: n for op, n in ops.items() if "Conv2D" in op and "Fused" not in op}
        assert not unfused, (name, unfused, fused)
        assert ops.get("AddN", 0) == 0, (name, ops)
        if swish:
            # V3's head adds one: its hard-swish after a matrix product on
            # the pooled (batch, 1024) vector, which stays a separate op.
            head = 1 if name == "v3" else 0
            assert ops.get("Relu6", 0) == found["gates"] + head, (name, ops, fused)
    if swish:
        assert counts["v3"]["fused"].get("BiasAdd+_FusedHardSwish", 0) > 10, counts["v3"]
    if residual:
        assert counts["v2"]["fused"].get("BiasAdd+Add", 0) == 10, counts["v2"]["fused"]


def test_inference_graph_has_bias_adds_and_no_custom_gradient():
    """What the remapper needs, in the traced graph on any machine: the folded
    biases as `BiasAdd` (one per convolution with a BatchNorm) and no custom
    gradient (`IdentityN`) around the hard-swish outside training."""
    import tensorflow as tf

    from keras_mobilenets import create_mobilenetv3
    from keras_mobilenets.layers import ConvBnAct

    model = create_mobilenetv3("small", input_shape=(32, 32, 3))
    x = tf.zeros((1, 32, 32, 3))
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(x).graph
    ops = [op.type for op in graph.get_operations()]
    folded = sum(isinstance(layer, ConvBnAct) and layer.bn is not None
                 for layer in model._flatten_layers())
    assert ops.count("BiasAdd") >= folded > 30, (ops.count("BiasAdd"), folded)
    assert "IdentityN" not in ops


@pytest.mark.parametrize("activation", ["hard_swish", "gelu"])
def test_training_batchnorm_and_activation_keep_one_map_less(activation, monkeypatch):
    """A training step through units of convolution, BatchNorm and
    hard-swish / GELU holds one feature map per unit less at its peak (oneDNN
    allocator's own count) with the two as one gradient
    (`layers/tf_batch_norm.py`) than with BatchNorm's fused kernel and the
    activation layer's gradient: it keeps only the BatchNorm input, and
    recomputes the activation's input only in the backward pass (run as soon
    as its inputs existed, the recomputation held a map per unit as well)."""
    import types

    import tensorflow as tf

    from keras_mobilenets.layers import ConvBnAct, quantization

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        tf.config.experimental.get_memory_info("CPU:0")
    except (ValueError, RuntimeError) as exc:
        pytest.skip(f"this TensorFlow's CPU allocator keeps no statistics ({exc})")
    module = quantization.tf_batch_norm
    separate = types.SimpleNamespace(
        takes=module.takes, ACTIVATIONS=(), batch_norm_train=module.batch_norm_train,
        batch_norm_act_train=module.batch_norm_act_train)
    x = tf.random.normal((8, 64, 64, 32), seed=1)
    map_bytes = 8 * 64 * 64 * 32 * 4
    units_count = 6
    peaks, grads = {}, {}
    for name, fused in (("one gradient", module), ("separate", separate)):
        monkeypatch.setattr(quantization, "tf_batch_norm", fused)
        keras.utils.set_random_seed(0)
        units = [ConvBnAct(32, 3, activation=activation) for _ in range(units_count)]

        @tf.function
        def step(x, units=units):
            with tf.GradientTape() as tape:
                y = x
                for unit in units:
                    y = unit(y, training=True)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [u.conv.kernel for u in units])

        step(x)  # traced and built; the peak below is of a second step
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        grads[name] = step(x)
        peaks[name] = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    if not peaks["separate"]:  # oneDNN with the system allocator answers 0
        pytest.skip("this TensorFlow's CPU allocator counts nothing")
    saved = (peaks["separate"] - peaks["one gradient"]) / map_bytes
    assert saved >= units_count - 2, (peaks, saved)
    for a, b in zip(grads["one gradient"], grads["separate"], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                   atol=1e-4 * float(tf.reduce_max(tf.abs(b))))
