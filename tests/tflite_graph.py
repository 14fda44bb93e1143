"""Reading a `.tflite` flatbuffer in tests: its operators, the ops the
interpreter resolves, the constant inputs' shapes; and the check that a
graph holds builtin operators only (what an on-device runtime without Flex
or custom kernels can run)."""

import pytest


def read_tflite(path):
    """The flatbuffer model of a .tflite file, and `op_name(operator code)`."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(code):
        return names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    return model, op_name


def litert_ops(path):
    """`[(op name, custom code)]` of every operator code in a .tflite flatbuffer,
    plus the op names the interpreter resolves (without default delegates,
    which would show up as DELEGATE)."""
    interpreter_lib = pytest.importorskip("ai_edge_litert.interpreter")
    model, op_name = read_tflite(path)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        codes.append((op_name(code), custom.decode() if custom else None))
    interpreter = interpreter_lib.Interpreter(
        model_path=path,
        experimental_op_resolver_type=interpreter_lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    resolved = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return codes, resolved, interpreter


def first_ops_constant_shapes(path, op_names):
    """Shapes of the constant inputs of the first operator of each name."""
    model, op_name = read_tflite(path)
    graph = model.Subgraphs(0)
    found = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = op_name(model.OperatorCodes(op.OpcodeIndex()))
        if name in op_names and name not in found:
            tensors = [graph.Tensors(t) for t in op.InputsAsNumpy() if t >= 0]
            found[name] = [tuple(t.ShapeAsNumpy().tolist()) if t.ShapeLength() else ()
                           for t in tensors if model.Buffers(t.Buffer()).DataLength()]
    return [found.get(name) for name in op_names]


def assert_builtin_only(path):
    codes, resolved, interpreter = litert_ops(path)
    for name, custom in codes:
        assert name != "CUSTOM" and custom is None, (name, custom)
    for name in resolved:
        assert not name.startswith("Flex") and name not in ("CUSTOM", "DELEGATE"), resolved
    return resolved, interpreter
