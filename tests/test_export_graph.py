"""The ONNX rewrite of `layers.export_graph` on hand-written graphs.

Each graph computes a hard-swish or hard-sigmoid the way converters write
them (tf2onnx: Add, Clip, Mul, Mul; others: Relu or Max then Min, Div by 6),
plus near misses that must stay as they are. onnxruntime runs the graph
before and after the rewrite on inputs around the kinks at -3 and 3.
"""

import numpy as np
import pytest

from keras_mobilenets.layers.export_graph import (
    fold_input_scale,
    fusable_pads,
    fuse_hard_activations,
    global_average_pools,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def const(name, value):
    return numpy_helper.from_array(np.array(value, "float32"), name)


def clamp_nodes(kind, src, dst):
    if kind == "clip":
        return [helper.make_node("Clip", [src, "zero", "six"], [dst])]
    if kind == "relu_min":
        return [helper.make_node("Relu", [src], [dst + "_r"]),
                helper.make_node("Min", [dst + "_r", "six"], [dst])]
    if kind == "max_min":
        return [helper.make_node("Max", ["zero", src], [dst + "_r"]),
                helper.make_node("Min", [dst + "_r", "six"], [dst])]
    raise ValueError(kind)


def build(kind="clip", divide=False, swish=True, opset=15, three=3.0, high=6.0, extra_use=False):
    """`x -> Conv(1x1) -> hard_sigmoid/hard_swish -> y` (the Conv makes x a computed tensor)."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["x"]),
             helper.make_node("Add", ["x", "three"], ["shifted"])]
    nodes += clamp_nodes(kind, "shifted", "clamped")
    if divide:
        nodes.append(helper.make_node("Div", ["clamped", "six"], ["gate"]))
    else:
        nodes.append(helper.make_node("Mul", ["sixth", "clamped"], ["gate"]))
    outputs = ["y"]
    nodes.append(helper.make_node("Mul", ["x", "gate"] if swish else ["gate", "gate"], ["y"]))
    if extra_use:  # the gate read twice: must not become HardSwish
        nodes.append(helper.make_node("Identity", ["gate"], ["gate_copy"]))
        outputs.append("gate_copy")
    consts = [const("w", np.random.default_rng(0).normal(size=(4, 4, 1, 1))), const("three", three),
              const("zero", 0.0), const("six", high), const("sixth", 1.0 / 6.0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 4, 5, 5]) for o in outputs], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def images():
    rng = np.random.default_rng(1)
    return np.concatenate([rng.uniform(-4, 4, (1, 4, 5, 5)), rng.normal(0, 3, (1, 4, 5, 5))]).astype("float32")


@pytest.mark.parametrize("kind", ["clip", "relu_min", "max_min"])
@pytest.mark.parametrize("divide", [False, True])
@pytest.mark.parametrize("swish", [True, False])
def test_chains_become_one_node_with_the_same_values(kind, divide, swish):
    model, x = build(kind, divide, swish), images()
    expected = run(model, x)
    read = {name for node in model.graph.node for name in node.input}
    unread = {i.name for i in model.graph.initializer} - read
    counts = fuse_hard_activations(model)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    if swish:
        assert counts == {"HardSigmoid": 0, "HardSwish": 1} and ops == ["Conv", "HardSwish"], ops
    else:  # gate * gate: the hard-sigmoid alone
        assert counts == {"HardSigmoid": 1, "HardSwish": 0}, counts
        assert ops == ["Conv", "HardSigmoid", "Mul"], ops
    # the constants only the chain read are gone
    assert {i.name for i in model.graph.initializer} == {"w"} | unread
    np.testing.assert_allclose(run(model, x)[0], expected[0], rtol=1e-6, atol=1e-6)


def test_hard_swish_needs_opset_14():
    model = build(opset=13)
    assert fuse_hard_activations(model) == {"HardSigmoid": 1, "HardSwish": 0}
    assert [n.op_type for n in model.graph.node] == ["Conv", "HardSigmoid", "Mul"]


def test_a_gate_read_twice_keeps_its_output():
    model, x = build(extra_use=True), images()
    expected = run(model, x)
    assert fuse_hard_activations(model) == {"HardSigmoid": 1, "HardSwish": 0}
    for got, want in zip(run(model, x), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("changes", [{"three": 2.0}, {"high": 5.0}])
def test_other_constants_are_left_alone(changes):
    model = build(**changes)
    before = [n.op_type for n in model.graph.node]
    assert fuse_hard_activations(model) == {"HardSigmoid": 0, "HardSwish": 0}
    assert [n.op_type for n in model.graph.node] == before


# --- global average pooling -------------------------------------------------


def build_mean(axes=(1, 2), keepdims=0, opset=18, rank=4):
    """`input -> Conv(1x1) -> [Transpose to NHWC] -> ReduceMean(axes) -> y`, as the
    exporters write a head's pooling (axes 1, 2 of a channels-last tensor)."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["x"])]
    x = "x"
    nchw = sorted(a % rank for a in axes) == [2, 3]  # pooled as it is, else channels-last
    if rank == 4 and not nchw:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nhwc"], perm=[0, 2, 3, 1]))
        x = "x_nhwc"
    if rank == 3:
        nodes.append(helper.make_node("Reshape", ["x", "flat_shape"], ["x_flat"]))
        x = "x_flat"
    consts = [const("w", np.random.default_rng(0).normal(size=(4, 4, 1, 1))),
              numpy_helper.from_array(np.array([2, 4, 25], "int64"), "flat_shape")]
    if opset >= 18:
        consts.append(numpy_helper.from_array(np.array(axes, "int64"), "axes"))
        nodes.append(helper.make_node("ReduceMean", [x, "axes"], ["y"], keepdims=keepdims))
    else:
        nodes.append(helper.make_node("ReduceMean", [x], ["y"], axes=list(axes), keepdims=keepdims))
    shape = [2, 4, 25] if rank == 3 else [2, 4, 5, 5] if nchw else [2, 5, 5, 4]
    reduced = {a % rank for a in axes}
    out = [1 if i in reduced else d for i, d in enumerate(shape) if keepdims or i not in reduced]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [(1, 2), (2, 1), (2, 3), (-2, -1)])
def test_spatial_means_become_global_average_pools_with_the_same_values(axes, keepdims, opset):
    model, x = build_mean(axes, keepdims, opset), images()
    expected = run(model, x)[0]
    assert global_average_pools(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 1, ops
    if opset >= 18:  # the axes constant only the ReduceMean read is gone
        assert "axes" not in {i.name for i in model.graph.initializer}
    got = run(model, x)[0]
    assert got.shape == expected.shape == ((2, 1, 1, 4) if keepdims and sorted(a % 4 for a in axes) == [1, 2]
                                           else (2, 4, 1, 1) if keepdims else (2, 4))
    assert got.std() > 0.1  # a mean of the random convolution, not zeros
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axes, rank", [((1,), 4), ((3,), 4), ((1, 2, 3), 4), ((1, 2), 3)])
def test_other_means_are_left_alone(axes, rank):
    model = build_mean(axes, rank=rank)
    before = [n.op_type for n in model.graph.node]
    assert global_average_pools(model) == 0
    assert [n.op_type for n in model.graph.node] == before


# --- the input rescaling's multiply folded into the first convolution ------


def build_input_scale(scale=1 / 127.5, offset=-1.0, casts=False, pads=(1, 1, 1, 1), group=1,
                      perm=(0, 3, 1, 2), read_twice=False, pad_value=None):
    """`input (NHWC) -> [Cast] -> Mul(scale) -> Add(offset) -> [Cast] -> Transpose -> [Pad]
    -> Conv`, as the exporters write V3's Rescaling and stem (the torch exporter with the
    Casts, and for SAME padding a Pad whose amounts it computes from a Shape)."""
    channels = 3
    nodes, x = [], "input"
    if casts:
        nodes.append(helper.make_node("Cast", [x], ["x_cast"], to=TensorProto.FLOAT))
        x = "x_cast"
    nodes += [helper.make_node("Mul", [x, "scale"], ["scaled"]),
              helper.make_node("Add", ["scaled", "offset"], ["shifted"])]
    y = "shifted"
    if casts:
        nodes.append(helper.make_node("Cast", [y], ["shifted_cast"], to=TensorProto.FLOAT))
        y = "shifted_cast"
    nodes.append(helper.make_node("Transpose", [y], ["nchw"], perm=list(perm)))
    y = "nchw"
    if pad_value is not None:  # the image padded by `pads`, the Conv then unpadded
        nodes += [helper.make_node("Shape", ["nchw"], ["nchw_shape"]),
                  helper.make_node("Pad", ["nchw", "pad_amounts", "pad_value"], ["padded"])]
        y, pads = "padded", (0, 0, 0, 0)
    nodes.append(helper.make_node("Conv", [y, "w", "b"], ["y"], pads=list(pads), strides=[2, 2],
                                  group=group))
    out_channels = 4 if group == 1 else channels
    size = (8 + pads[0] + pads[2] - 3) // 2 + 1
    pad_amounts = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, out_channels, size, size])]
    if read_twice:
        nodes.append(helper.make_node("Identity", ["scaled"], ["scaled_copy"]))
        outputs.append(helper.make_tensor_value_info("scaled_copy", TensorProto.FLOAT, [2, 8, 8, 3]))
    rng = np.random.default_rng(0)
    consts = [const("scale", scale), const("offset", offset),
              const("w", rng.normal(size=(out_channels, channels // group, 3, 3))),
              const("b", rng.normal(size=out_channels)), const("pad_value", pad_value or 0.0),
              numpy_helper.from_array(np.array(pad_amounts, "int64"), "pad_amounts")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 8, 8, channels])],
        outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def pixels():
    return np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize("scale, offset", [(1 / 127.5, -1.0), ([0.02, 0.03, 0.05], [-2.0, -1.0, 0.5]),
                                           (1 / 255.0, [0.1, 0.2, 0.3])])
@pytest.mark.parametrize("casts", [False, True])
@pytest.mark.parametrize("pads, pad_value", [((1, 1, 1, 1), None), ((0, 0, 1, 1), None),
                                             ((0, 0, 1, 1), 0.0)])
def test_the_input_scale_folds_into_the_first_convolution_with_the_same_values(
        scale, offset, casts, pads, pad_value):
    model, x = build_input_scale(scale, offset, casts, pads, pad_value=pad_value), pixels()
    expected = run(model, x)[0]
    assert fold_input_scale(model) == 1
    onnx.checker.check_model(model)
    on_input = [n.op_type for n in model.graph.node if n.op_type in ("Mul", "Add")]
    # the image's Mul is gone; the kernel's Mul reads constants only (folded when loaded)
    assert on_input == ["Add", "Mul"], on_input
    kernel_mul = next(n for n in model.graph.node if n.op_type == "Mul")
    assert set(kernel_mul.input) <= {i.name for i in model.graph.initializer}
    assert not {"scale", "offset"} & {i.name for i in model.graph.initializer}
    got = run(model, x)[0]
    assert np.abs(expected).max() > 1  # the padded border and the interior both count
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("changes", [{"read_twice": True}, {"scale": 0.0},
                                     {"scale": [0.02, 0.0, 0.05]},
                                     {"scale": [0.02, 0.03, 0.05], "group": 3},
                                     {"perm": (0, 3, 2, 1)}, {"pad_value": 1.0}])
def test_other_inputs_are_left_alone(changes):
    model = build_input_scale(**changes)
    before = [n.op_type for n in model.graph.node]
    assert fold_input_scale(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def test_a_float16_input_scale_is_left_alone():
    model = build_input_scale()
    for init in model.graph.initializer:
        if init.name in ("scale", "offset"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"),
                                                  init.name))
    before = [n.op_type for n in model.graph.node]
    assert fold_input_scale(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def test_without_shapes_the_means_are_left_alone(monkeypatch):
    """Shape inference failing (a graph over protobuf's 2 GB) costs the rewrite, not the export."""
    from onnx import shape_inference

    def fail(model, *args, **kwargs):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(shape_inference, "infer_shapes", fail)
    model = build_mean()
    before = [n.op_type for n in model.graph.node]
    assert global_average_pools(model) == 0
    assert [n.op_type for n in model.graph.node] == before


# --- a zero Pad that onnxruntime can fold into the convolution ----------------


def build_pad_conv(third_input=""):
    """`x (NCHW) -> Pad(pads, third_input) -> Conv`, as the torch exporter writes
    TensorFlow SAME padding at stride 2 (bottom and right), third input empty."""
    inputs = ["x", "pads"] + ([third_input] if third_input is not None else [])
    nodes = [helper.make_node("Relu", ["input"], ["x"]),
             helper.make_node("Pad", inputs, ["padded"], mode="constant"),
             helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2])]
    consts = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], "int64"), "pads"),
              const("w", np.random.default_rng(0).normal(size=(4, 4, 3, 3)))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 4])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def optimized_ops(model, tmp_path):
    """Op types of `model` after onnxruntime's basic graph optimisation."""
    path, optimized = tmp_path / "model.onnx", tmp_path / "optimized.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(optimized)).graph.node]


def test_an_empty_pad_input_is_dropped_so_onnxruntime_folds_the_pad(tmp_path):
    model = build_pad_conv()
    x = np.random.default_rng(3).normal(size=(2, 4, 8, 8)).astype("float32")
    expected = run(model, x)[0]
    assert "Pad" in optimized_ops(model, tmp_path)  # why the rewrite exists
    assert fusable_pads(model) == 1
    onnx.checker.check_model(model)
    assert list(model.graph.node[1].input) == ["x", "pads"]
    assert "Pad" not in optimized_ops(model, tmp_path)
    np.testing.assert_array_equal(run(model, x)[0], expected)


@pytest.mark.parametrize("third_input", [None, "zero"])
def test_pads_without_an_empty_input_are_left_alone(third_input):
    model = build_pad_conv(third_input)
    if third_input:
        model.graph.initializer.append(const("zero", 0.0))
    before = [list(n.input) for n in model.graph.node]
    assert fusable_pads(model) == 0
    assert [list(n.input) for n in model.graph.node] == before
