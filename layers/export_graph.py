"""Rewrites of exported ONNX graphs that onnxruntime runs faster, same values.

Hard-sigmoid and hard-swish as single nodes:

TensorFlow's converter (tf2onnx) has no hard-swish: it writes
`x * relu6(x + 3) / 6` as four nodes (Add, Clip, Mul, Mul) and the SE gate's
hard-sigmoid as three, which onnxruntime neither fuses nor merges into the
convolution before them. The torch exporter writes `HardSwish` and
`HardSigmoid`, which onnxruntime runs as one kernel or folds into the
convolution; MobileNetV3 has ~40 of these activations, so the TensorFlow
export ran 1.2-1.4x slower than the same weights exported from torch
(`benchmarks/export_latency.md`). `fuse_hard_activations` rewrites those
chains into the single ONNX ops. The results differ from the chains by float
rounding only (`alpha * x + beta` instead of `(x + 3) / 6`).

Global average pooling as `GlobalAveragePool`: both exporters write the mean
over the height and width of a channels-last tensor as `ReduceMean`, which
onnxruntime runs outside its blocked (NCHWc) convolution layout, so the
feature map in front of it is reordered out of that layout (and the
activation of the convolution before it stays a separate node), and, in a
squeeze-excite gate, the pooled vector reordered back in. timm's exports have
`GlobalAveragePool` in the head, which onnxruntime runs in the blocked layout.
`global_average_pools` writes it (`benchmarks/README.md`, exported models).

The input rescaling's multiply inside the first convolution's kernel
(`fold_input_scale`): with V3's `Rescaling` the image took a Mul, an Add and
the Transpose, three passes (onnxruntime, batch 32: 6.5 ms against the stem
convolution's 7.4).

Padding inside the convolutions (`fusable_pads`): the torch exporter writes
TensorFlow SAME padding (keras.applications-style V1-V3 on torch) as a `Pad`
node with an empty third input, and onnxruntime fuses a zero `Pad` into the
convolution after it only when every input is a constant, which an empty one
is not; left alone, V3 small kept 5 `Pad` nodes and 36 layout reorders
against 28 (`benchmarks/README.md`, exported models).

`FastFunctional.export` applies all four to every ONNX file it writes
(`rewrite_onnx_file`).
"""

SIXTH = 1.0 / 6.0


def _constant(graph_values, name):
    """The value of `name` if it is a small constant (initializer or Constant node)."""
    value = graph_values.get(name)
    return None if value is None or value.size > 1 else float(value.reshape(()))


def _constants(graph):
    from onnx import numpy_helper

    values = {}
    for init in graph.initializer:
        if not init.external_data and init.data_location != 1:  # not stored outside the file
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _other_input(node, values, expected, rtol=1e-6):
    """For a two-input node with one constant input ≈ `expected`: the other input."""
    if len(node.input) != 2:
        return None
    for i in (0, 1):
        c = _constant(values, node.input[i])
        if c is not None and abs(c - expected) <= rtol * abs(expected):
            return node.input[1 - i]
    return None


def _clip_bounds(node, values):
    if node.op_type != "Clip":
        return None
    if len(node.input) >= 3 and node.input[1] and node.input[2]:
        return _constant(values, node.input[1]), _constant(values, node.input[2])
    attrs = {a.name: a.f for a in node.attribute}  # opset < 11
    return attrs.get("min"), attrs.get("max")


def _consumers(graph):
    """Tensor name -> the nodes that read it."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def fuse_hard_activations(model):
    """Rewrite hard-sigmoid / hard-swish chains of `model` (an `onnx.ModelProto`) in place.

    Matched: `Add(x, 3)`, then a clamp to [0, 6] (`Clip`, or `Relu` / `Max(0)`
    and `Min(6)`), then `Mul(1/6)` or `Div(6)`: that is `HardSigmoid(x)`; when
    its only consumer is `Mul(x, ·)` the whole is `HardSwish(x)` (opset >= 14).
    Every intermediate result must have that single consumer. Returns
    `{"HardSigmoid": n, "HardSwish": m}`, the number of nodes written.
    """
    from onnx import helper

    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    values = _constants(graph)
    consumers, outputs = _consumers(graph), {o.name for o in graph.output}

    def only_consumer(tensor):
        nodes = consumers.get(tensor, [])
        return nodes[0] if len(nodes) == 1 and tensor not in outputs else None

    def clamp(node, chain):
        """Follow a clamp to [0, 6] starting at `node`; return its output or None."""
        bounds = _clip_bounds(node, values)
        if bounds is not None:
            if bounds == (0.0, 6.0):
                chain.append(node)
                return node.output[0]
            return None
        if node.op_type in ("Relu", "Max"):
            if node.op_type == "Max" and _other_input(node, values, 0.0, rtol=0) is None:
                return None
            nxt = only_consumer(node.output[0])
            if nxt is not None and nxt.op_type == "Min" and _other_input(nxt, values, 6.0):
                chain += [node, nxt]
                return nxt.output[0]
        if node.op_type == "Min" and _other_input(node, values, 6.0):
            nxt = only_consumer(node.output[0])
            if nxt is not None and nxt.op_type == "Max" and _other_input(nxt, values, 0.0, rtol=0):
                chain += [node, nxt]
                return nxt.output[0]
        return None

    replaced = {}  # id(first node of a chain) -> (new node, chain)
    counts = {"HardSigmoid": 0, "HardSwish": 0}
    for add in graph.node:
        if add.op_type != "Add":
            continue
        x = _other_input(add, values, 3.0)
        if x is None:
            continue
        chain = [add]
        nxt = only_consumer(add.output[0])
        clamped = clamp(nxt, chain) if nxt is not None else None
        scale = only_consumer(clamped) if clamped is not None else None
        if scale is None or not (
            (scale.op_type == "Mul" and _other_input(scale, values, SIXTH) == clamped)
            or (scale.op_type == "Div" and scale.input[0] == clamped
                and _constant(values, scale.input[1]) == 6.0)
        ):
            continue
        chain.append(scale)
        gate = scale.output[0]
        mul = only_consumer(gate)
        if opset >= 14 and mul is not None and mul.op_type == "Mul" and sorted(mul.input) == sorted([x, gate]):
            chain.append(mul)
            new = helper.make_node("HardSwish", [x], [mul.output[0]], name=f"{add.name}/hard_swish")
        else:
            new = helper.make_node("HardSigmoid", [x], [gate], name=f"{add.name}/hard_sigmoid",
                                   alpha=SIXTH, beta=0.5)
        counts[new.op_type] += 1
        replaced[id(add)] = (new, chain)

    if replaced:
        removed = {id(n) for _, chain in replaced.values() for n in chain}
        nodes = []
        for node in graph.node:
            if id(node) in replaced:
                nodes.append(replaced[id(node)][0])  # x is ready here; the output's users come later
            elif id(node) not in removed:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused(graph, {name for _, chain in replaced.values() for n in chain for name in n.input})
    return counts


def _drop_unused(graph, candidates):
    """Remove the constants among `candidates` (inputs of removed nodes) nothing reads now."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = candidates - used
    keep = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] not in unused]
    del graph.node[:]
    graph.node.extend(nodes)


def _ranks(model):
    """Rank of every tensor whose shape onnx's shape inference knows."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:  # e.g. a graph over protobuf's 2 GB: no ranks, no rewrite, same file
        return {}
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }


def _reduce_axes(node, values):
    """The constant `axes` of a ReduceMean (an input from opset 18, before an attribute)."""
    if len(node.input) > 1 and node.input[1]:
        axes = values.get(node.input[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(attribute.ints)
    return None


def global_average_pools(model):
    """Rewrite, in place, every `ReduceMean` over axes (1, 2) or (2, 3) of a
    rank-4 tensor as `GlobalAveragePool` (over 2, 3), with a `Transpose` in
    front for (1, 2) (onnxruntime cancels it against the one behind the
    convolution) and behind it the `keepdims` shape: `Flatten` for (N, C), a
    `Transpose` back for (N, 1, 1, C). The same mean whatever the tensor
    holds; returns the number of nodes rewritten."""
    from onnx import helper

    graph = model.graph
    values = _constants(graph)
    candidates = [n for n in graph.node if n.op_type == "ReduceMean"]
    ranks = _ranks(model) if candidates else {}
    rewritten = {}
    for node in candidates:
        axes = _reduce_axes(node, values)
        if ranks.get(node.input[0]) != 4 or axes is None:
            continue
        axes = sorted(a % 4 for a in axes)
        if axes not in ([1, 2], [2, 3]):
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        x, y, stem = node.input[0], node.output[0], node.name or node.output[0]
        new = []
        if axes == [1, 2]:
            new.append(helper.make_node("Transpose", [x], [f"{stem}/nchw"], perm=[0, 3, 1, 2],
                                        name=f"{stem}/to_nchw"))
            x = f"{stem}/nchw"
        if axes == [1, 2] and keepdims:
            new += [helper.make_node("GlobalAveragePool", [x], [f"{stem}/pooled"], name=f"{stem}/pool"),
                    helper.make_node("Transpose", [f"{stem}/pooled"], [y], perm=[0, 2, 3, 1],
                                     name=f"{stem}/to_nhwc")]
        elif keepdims:
            new.append(helper.make_node("GlobalAveragePool", [x], [y], name=f"{stem}/pool"))
        else:
            new += [helper.make_node("GlobalAveragePool", [x], [f"{stem}/pooled"], name=f"{stem}/pool"),
                    helper.make_node("Flatten", [f"{stem}/pooled"], [y], axis=1, name=f"{stem}/flatten")]
        rewritten[id(node)] = new
    if rewritten:
        nodes = []
        for node in graph.node:
            nodes += rewritten.get(id(node), [node])
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused(graph, {n.input[1] for n in candidates if id(n) in rewritten and len(n.input) > 1})
    return len(rewritten)


def _constant_array(values, node):
    """For a two-input node with one constant input: (its index, the array); else None."""
    if len(node.input) != 2:
        return None
    for i in (0, 1):
        if node.input[i] in values:
            return i, values[node.input[i]]
    return None


def _zero_padding(node, values):
    """Whether a Pad node pads with zeros."""
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode != b"constant":
        return False
    if len(node.input) > 2 and node.input[2]:
        value = values.get(node.input[2])
        return value is not None and value.size == 1 and float(value.reshape(())) == 0.0
    return True


def fold_input_scale(model):
    """Fold the multiply of an input's rescaling into the convolution it feeds, in place.

    Matched: a graph input (channels-last, as Keras exports) `-> Mul(s) ->
    Add(o) -> Transpose to NCHW -> Conv(W)`, float-to-float `Cast`s and a
    zero `Pad` before the Conv allowed, each result read once, `s` and `o`
    float32, `s` a nonzero scalar or per-channel vector. Written: `Add(o / s) -> Transpose -> Conv(W * s)`, the kernel
    product a `Mul` of constants that onnxruntime folds when it loads the
    file. The same values up to float rounding, since `W * (s * x + o) = (W *
    s) * (x + o / s)` and the convolution's zero padding is zero in both
    (which is why the add is not folded too). One pass over the input image
    less: V3's `Rescaling` took a Mul, an Add and the Transpose over the image
    (`benchmarks/README.md`, exported models). Returns the number folded."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    values = _constants(graph)
    consumers, outputs = _consumers(graph), {o.name for o in graph.output}

    def next_node(tensor):
        """The single consumer of `tensor`, past float-to-float Casts; `Shape`
        nodes (the torch exporter's padding arithmetic) read no values."""
        while True:
            nodes = [n for n in consumers.get(tensor, []) if n.op_type != "Shape"]
            if len(nodes) != 1 or tensor in outputs:
                return None
            node = nodes[0]
            if node.op_type != "Cast" or next(
                    (a.i for a in node.attribute if a.name == "to"), None) != 1:  # FLOAT
                return node
            tensor = node.output[0]

    initializers = {init.name for init in graph.initializer}
    inserted, removed, replaced, folded = {}, set(), set(), 0
    for graph_input in graph.input:
        if graph_input.name in initializers:
            continue
        mul = next_node(graph_input.name)
        add = next_node(mul.output[0]) if mul is not None and mul.op_type == "Mul" else None
        transpose = next_node(add.output[0]) if add is not None and add.op_type == "Add" else None
        conv = (next_node(transpose.output[0])
                if transpose is not None and transpose.op_type == "Transpose" else None)
        if conv is not None and conv.op_type == "Pad" and _zero_padding(conv, values):
            conv = next_node(conv.output[0])  # zeros scale to zeros
        if conv is None or conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        scale, offset = _constant_array(values, mul), _constant_array(values, add)
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if scale is None or offset is None or perm != [0, 3, 1, 2]:
            continue
        if scale[1].dtype != np.float32 or offset[1].dtype != np.float32:
            continue  # the new constants are float32, as the kernel must be
        s, o = scale[1], offset[1]
        if (s.size > 1 and (s.shape[-1] != s.size or group != 1)) or not np.all(s != 0):
            continue
        if o.size > 1 and o.shape[-1] != o.size:
            continue
        stem = mul.name or mul.output[0]
        new_offset = numpy_helper.from_array((o / s).astype("float32"), f"{stem}/offset_over_scale")
        kernel_scale = numpy_helper.from_array(
            s.reshape(-1).reshape((1, -1, 1, 1) if s.size > 1 else ()), f"{stem}/kernel_scale")
        graph.initializer.extend([new_offset, kernel_scale])
        replaced |= {mul.input[scale[0]], add.input[offset[0]]}
        add.input[offset[0]] = new_offset.name
        add.input[1 - offset[0]] = mul.input[1 - scale[0]]
        kernel = f"{stem}/scaled_kernel"
        inserted[id(conv)] = helper.make_node("Mul", [conv.input[1], kernel_scale.name], [kernel],
                                              name=f"{stem}/scale_kernel")
        conv.input[1] = kernel
        removed.add(id(mul))
        folded += 1
    if folded:
        nodes = []
        for node in graph.node:
            if id(node) in inserted:
                nodes.append(inserted[id(node)])
            if id(node) not in removed:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused(graph, replaced)
    return folded


def fusable_pads(model):
    """Drop the empty trailing inputs of every `Pad` node, in place (an empty
    input is an absent one: the same padding). Returns the number changed."""
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Pad" and node.input and not node.input[-1]:
            while node.input and not node.input[-1]:
                node.input.pop()
            changed += 1
    return changed


def rewrite_onnx_file(path):
    """`fuse_hard_activations`, `global_average_pools`, `fold_input_scale` and
    `fusable_pads` on the ONNX file at `path` (weights stored beside it stay
    there). Written whole: an interrupted rewrite leaves the exported file as
    it was. Returns the number of nodes written per kind."""
    import os

    import onnx

    model = onnx.load(path, load_external_data=False)
    counts = fuse_hard_activations(model)
    counts["GlobalAveragePool"] = global_average_pools(model)
    counts["input scale"] = fold_input_scale(model)
    counts["Pad"] = fusable_pads(model)
    if any(counts.values()):
        partial = path + ".partial"
        onnx.save(model, partial)
        os.replace(partial, path)
    return counts
