"""A shorter `__call__` for this library's layers on the PyTorch backend.

On TensorFlow and JAX a model runs as one traced graph, so Keras' per-layer
`__call__` work (input conversion, call-spec binding, name and autocast
scopes, training resolution, masks) costs only tracing time. PyTorch runs
eagerly: that work repeats for each of the ~120 layer calls of a forward
pass, and at small batches it outweighs the convolutions themselves
(`benchmarks/torch_overhead.py --keras-call` measures both paths).

`FastCall.__call__` calls `call` directly when skipping `__call__` changes
nothing: torch backend, layer built, first argument a float32 torch tensor,
float32 layer (no autocast, no quantized or rematerialised call), no outer
autocast scope; or, for a layer of a mixed policy, after the two things
`__call__` does there (`FastCall._mixed_call`). `training`, when the layer
takes it and is not given it, is taken from the enclosing Keras call, as
`__call__` would. Anything else goes through Keras' `__call__`.

Two more pieces for eager inference on torch (`eager_torch_inference`):
the convolution layers keep their torch-layout (BatchNorm-folded) weights
between calls (`kept`) and call torch directly, and `FastFunctional`, the
model class the factories build, skips Keras' `__call__` for the model
itself as well. Under torch.compile the plain `keras.ops` route is traced
(no cache in the graph), as one graph.
"""

import contextlib
import functools
import types

import keras
import numpy as np
from keras.src.backend import AutocastScope, get_autocast_scope
from keras.src.backend.common import global_state
from keras.src.models.functional import Functional

_TORCH = keras.backend.backend() == "torch"
_TENSORFLOW = keras.backend.backend() == "tensorflow"
if _TORCH:
    import torch
    from keras.src.backend.torch.core import to_torch_dtype

    from . import recompute


class FastCall:
    """Mixin: see the module docstring. Put it before the Keras base class."""

    def __call__(self, *args, **kwargs):
        if (
            _TORCH
            and args
            and self.built
            and isinstance(args[0], torch.Tensor)
            and getattr(self, "quantization_mode", None) is None
            and self._remat_mode is None
        ):
            if (args[0].dtype == torch.float32 and self.compute_dtype == "float32"
                    and self.variable_dtype == "float32" and get_autocast_scope() is None):
                return self.call(*args, **self._call_kwargs(kwargs))
            if _takes_mixed_call(self, args):
                return self._mixed_call(args[0], kwargs)
        return super().__call__(*args, **kwargs)

    def _call_kwargs(self, kwargs):
        """`kwargs` with `training` resolved as Keras' `__call__` would."""
        if self._call_has_training_arg:
            if kwargs.get("training") is None:
                context = global_state.get_global_attribute("current_call_ctx")
                training = None if context is None else context.training
                if training is not None:
                    kwargs["training"] = training
        else:
            kwargs.pop("training", None)
        return kwargs

    def _mixed_call(self, x, kwargs):
        """What Keras' `__call__` does for a mixed-precision layer: the float
        input cast to the compute dtype, the call in an autocast scope of that
        dtype (float32 variables read in it). Under torch.compile Keras' own
        `__call__` breaks the graph (it reads the call signature through
        `inspect`, and `keras.layers.Rescaling` its ops through a module that
        imports): dozens of graphs, recompiled past torch's limit for the
        layers they share code with, then traced with symbolic shapes, which
        failed (mixed_bfloat16 V3 small, `jit_compile=True`). Eagerly it is
        the per-layer work that the float32 path skips (`mixed_bfloat16` on
        one CPU thread, inference, this path / Keras' `__call__`: V3 small
        0.88 at batch 1 and 0.92 at batch 8, V4 conv_small 0.95 and 0.98;
        the same outputs)."""
        x = x.to(to_torch_dtype(self.compute_dtype))
        scope = get_autocast_scope()
        kwargs = self._call_kwargs(kwargs)
        if scope is not None and scope.dtype == self.compute_dtype:
            return self.call(x, **kwargs)
        with AutocastScope(self.compute_dtype):
            return self.call(x, **kwargs)


def _takes_mixed_call(layer, args):
    """Whether `layer` takes `_mixed_call`: a float tensor through a layer of
    a mixed policy (float32 variables, a 16-bit compute dtype) that
    autocasts, with one positional argument."""
    return (len(args) == 1 and args[0].is_floating_point() and layer.autocast
            and layer.variable_dtype == "float32"
            and layer.compute_dtype in ("bfloat16", "float16") and layer._convert_input_args)


def eager_torch_inference(x):
    """Whether a layer may take its eager-inference route on torch for `x`.

    A float32 torch tensor holding data (not shape inference on the meta
    device), autograd not recording, nothing compiling (torch.compile traces
    the plain route). There the convolution layers call torch with weights
    prepared once (`kept`) instead of rebuilding them with small `keras.ops`
    calls on every call, which at batch 1 cost more than the convolutions.
    """
    return (_TORCH and isinstance(x, torch.Tensor) and x.dtype == torch.float32
            and not torch.is_grad_enabled() and x.device.type != "meta"
            and not torch.compiler.is_compiling())


def kept(layer, name, make):
    """`make()`'s value, kept on `layer` until one of its variables changes.

    `make()` returns `(value, variables)`: the torch tensors derived from the
    variables, and the variables. They are recomputed when a variable holds
    another tensor or its tensor was written in place (torch counts those
    writes in `Tensor._version`: assignments, optimizer steps, `set_weights`).
    """
    entry = layer.__dict__.get(name)
    if entry is not None and all(v._value is t and t._version == n for v, t, n in entry[0]):
        return entry[1]
    value, variables = make()
    state = tuple((v, v._value, v._value._version) for v in variables)
    object.__setattr__(layer, name, (state, value))  # past Keras' attribute tracking: a cache
    return value


def _as_tensor(value):
    return keras.ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value


# NumPy dtypes torch shares memory with (Keras converts the rest itself).
_SHAREABLE = frozenset(np.dtype(t) for t in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"))


def _shared_tensor(value):
    """A NumPy batch as a torch tensor on the same memory (on a GPU, one
    copy there). Keras' torch conversion copies an array (`np.array`) before
    handing it to torch, and the copy of an image batch stays alive through
    the forward pass, where a training step's memory peaks. Arrays torch
    cannot share (read-only, strided, other dtypes) are left to Keras."""
    if (isinstance(value, np.ndarray) and value.dtype in _SHAREABLE
            and value.flags.c_contiguous and value.flags.writeable):
        from keras.src.backend.torch.core import get_device

        return torch.as_tensor(value, device=get_device())
    return value


def _own_code(fn):
    """`fn` with a code object of its own. torch.compile keeps compiled
    entries per code object, and Keras' step closures of all models share
    one: each call checks the other models' entries in turn, and past
    torch's recompile limit (8) a function runs uncompiled."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def _graph_steps(model):
    """`[(node, ids of the tensors it reads last)]` in the order Keras runs
    the nodes (by depth, deepest first); False where the graph walk should
    stay Keras' own (an output not computed by a node of the walk)."""
    order = [node for depth in sorted(model._nodes_by_depth, reverse=True)
             for node in model._nodes_by_depth[depth]
             if node.operation and not node.is_input]
    last = {}
    for i, node in enumerate(order):
        for x in node.input_tensors:
            last[id(x)] = i
    made = {id(x) for x in model.inputs}
    for node in order:
        made.update(id(x) for x in node.outputs)
    if any(id(x) not in made for x in model.outputs):
        return False
    kept = {id(x) for x in model.outputs} | {id(x) for x in model.inputs}
    reads = [[] for _ in order]
    for key, i in last.items():
        if key not in kept:
            reads[i].append(key)
    return [(node, tuple(r)) for node, r in zip(order, reads)]


@keras.saving.register_keras_serializable(package="keras_mobilenets")
class FastFunctional(FastCall, Functional):
    """The functional model the factories return: a `keras.Model` whose own
    call also skips Keras' `__call__` in eager inference on torch (call
    context, input conversion, clearing the losses of every nested layer:
    work repeated on every eager call), and while torch.compile traces it
    (Keras' `__call__` reads attributes of every nested layer, and
    torch.compile checks each of them again before every call). The input
    is still checked against the model's input spec first; every other
    call, eager training included, goes through Keras. Measured in
    `benchmarks/README.md` (torch backend against timm)."""

    def __call__(self, *args, **kwargs):
        if (args and kwargs.get("mask") is None
                and (eager_torch_inference(args[0]) or (_TORCH and torch.compiler.is_compiling()))):
            self._assert_input_compatibility(args[0])
            return super().__call__(*args, **kwargs)
        return Functional.__call__(self, *args, **kwargs)

    def make_predict_function(self, force=False):
        """Keras' predict function; on torch with `jit_compile=True`,
        compiled for this model alone and guarded like a traced function.

        Keras compiles one closure per model with `torch.compile`; here
        each model gets its own code object (`_own_code`). torch.compile also re-checks
        before every call each Python value the trace read (thousands of
        layer attributes: at batch 1 a large part of a call, measured in
        `docs/torch_backend.md`); here only tensors (shapes, dtypes,
        devices) and global state (grad mode, autocast) are checked. That is what
        `tf.function` and `jax.jit` do with Keras' predict function on the
        other backends: a model's Python attributes are read once, when
        traced. Keras drops the predict function in `compile()` and
        `quantize()`, the calls that change what a model computes. On JAX
        the step is compiled with `cpu_speed_options` (XLA:CPU).
        """
        made = force or self.predict_function is None
        with _jax_steps_with_speed_options(self):
            super().make_predict_function(force)
        fn = getattr(self.predict_function, "_torchdynamo_orig_callable", None)
        if made and fn is not None:
            compiled = torch.compile(
                _own_code(fn),
                options={"guard_filter_fn": torch.compiler.keep_portable_guards_unsafe})

            def predict_function(data):
                # NumPy arrays (`predict_on_batch(array)`) become tensors
                # first: torch.compile failed building the guards of an
                # array input ("Boolean value of Tensor ... is ambiguous").
                return compiled(keras.tree.map_structure(_as_tensor, data))

            predict_function._torchdynamo_orig_callable = compiled._torchdynamo_orig_callable
            self.predict_function = predict_function
        return self.predict_function

    def make_test_function(self, force=False):
        """Keras' test function; on JAX compiled with `cpu_speed_options`."""
        with _jax_steps_with_speed_options(self):
            return super().make_test_function(force)

    def predict_on_batch(self, x):
        """Keras' `predict_on_batch`; on JAX without its round trip of every variable.

        Keras' JAX predict step takes the variables' values donated and returns
        them all, which it then assigns back one by one: at batch 1 that was half
        of V3 small's call (`docs/speed.md`). Here the values
        are passed, not donated, and only those a layer assigned in inference are
        returned and assigned (none in these models)."""
        variables = None
        if (keras.backend.backend() == "jax" and not self.run_eagerly and self.jit_compile
                and keras.distribution.distribution() is None):
            variables = _jax_variables(self)
        if variables is None:
            return super().predict_on_batch(x)
        trainable, non_trainable = variables
        predict_function = self.make_predict_function()
        # Remade with Keras' predict function, which compile() and quantize() drop.
        if getattr(self, "_jax_predict_for", None) is not predict_function:
            self._jax_predict_step = _jax_predict_step(self)
            self._jax_predict_for = predict_function
        # `_value` is `value` outside stateless and autocast scopes
        # (`_jax_variables` checks), without its checks on each of hundreds.
        outputs, assigned = self._jax_predict_step(
            [v._value for v in trainable], [v._value for v in non_trainable], x)
        for i, value in assigned.items():
            non_trainable[i].assign(value)
        return keras.tree.map_structure(np.asarray, outputs)

    def make_train_function(self, force=False):
        """Keras' train function. On torch with `jit_compile=True`, compiled
        for this model alone (as the predict function) and with Inductor's
        layout optimisation forced on. Inductor decides that per graph and
        turns it on (on CPU) for graphs with convolutions, which the backward
        graph, made of convolution backward passes, has not; without it the
        compiled step handed those backward passes gradients in another
        memory layout than their channels-last inputs (V3 small at batch 16:
        1.07 against 0.75 times timm compiled's step,
        `docs/torch_backend.md`). On JAX, the step is compiled with XLA:CPU's
        memory-optimising scheduler, and the memory XLA used compiling it
        goes back to the system before the step runs (`compile_memory`)."""
        made = force or self.train_function is None
        super().make_train_function(force)
        if made and keras.backend.backend() == "jax" and self.train_function is not None:
            from .compile_memory import memory_scheduled_train_step, trimming_after_compile

            step = memory_scheduled_train_step(self)
            if step is not None and hasattr(self, "_make_function"):  # Keras' own helper
                self.train_function = self._make_function(step)
            self.train_function = trimming_after_compile(self.train_function)
        fn = getattr(self.train_function, "_torchdynamo_orig_callable", None)
        if made and fn is not None:
            self.train_function = torch.compile(
                _own_code(fn), options={"force_layout_optimization": True})
        return self.train_function

    def train_step(self, *args):
        """Keras' train step; on torch the previous step's gradients are
        dropped before the forward pass, as timm's loop does. Keras' torch
        step drops them after it, so they stayed alive through the forward
        pass, where the step's memory peaks (one model-sized copy more:
        measured in `docs/training_memory.md`). NumPy batches (`train_on_batch`)
        become tensors on their own memory (`_shared_tensor`) instead of Keras'
        copy, and tensors the layers can rebuild from the batch are rebuilt in
        the backward pass instead of kept (`recompute`: V3's rescaled copy of
        the batch)."""
        if _TORCH:
            self.zero_grad()
            if not torch.compiler.is_compiling():
                args = keras.tree.map_structure(_shared_tensor, args)
                with recompute.recording():
                    return super().train_step(*args)
        return super().train_step(*args)  # JAX's takes (state, data)

    def _run_through_graph(self, inputs, operation_fn=lambda op: op, call_fn=None):
        """Keras' walk through the model's graph, in Keras' order, except
        that each intermediate tensor is let go after the last layer that
        reads it. Keras keeps every tensor of the forward pass until the
        pass ends, where a training step's memory peaks: on torch, that kept
        the tensors autograd does not save beside those it does (V3's
        rescaled batch, block outputs read only by a residual sum), and in
        eager inference every feature map at once. Traced graphs (JAX,
        TensorFlow, torch.compile) free by liveness anyway."""
        steps = self.__dict__.get("_graph_steps")
        if steps is None:
            steps = _graph_steps(self)
            object.__setattr__(self, "_graph_steps", steps)  # a cache, past Keras' tracking
        if steps is False:
            return super()._run_through_graph(inputs, operation_fn, call_fn)
        tensors = {id(x): y for x, y in zip(self.inputs, keras.tree.flatten(inputs))}
        for node, last_reads in steps:
            if any(id(x) not in tensors for x in node.input_tensors):
                continue  # not computable from the inputs given, as in Keras
            args, kwargs = node.arguments.fill_in(tensors)
            if call_fn is not None:
                outputs = call_fn(operation_fn(node.operation), *args, **kwargs)
            else:
                outputs = operation_fn(self._get_operation_for_node(node))(*args, **kwargs)
            for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(x)] = y
            del args, kwargs, outputs
            for key in last_reads:
                tensors.pop(key, None)
        for i, x in enumerate(self.outputs):
            if id(x) not in tensors:
                raise ValueError(f"Output {i} of {self.name} is not connected to `inputs`")
        return keras.tree.pack_sequence_as(self._outputs_struct,
                                           [tensors[id(x)] for x in self.outputs])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """On TensorFlow Keras builds the optimizer (Adam: two slot variables
        per weight) and the compiled metrics before the first trace of the
        train function only under a distribution strategy; otherwise inside
        that trace, and a `tf.function` that creates variables is traced a
        second time: the first step traced the model, its gradient and the
        update twice (V3 small at 32 px, Adam, `train_on_batch` on one
        thread: 13.4 s, 6.5 s built first; SGD, no slots: 3.1 s). Here they
        are built first without a strategy too, from the first batch, as
        under the default strategy: the same variables, for the weights
        trainable at the first step."""
        if _TENSORFLOW and getattr(self, "_distribute_strategy", None) is None:
            import tensorflow as tf

            self._distribute_strategy = tf.distribute.get_strategy()
            try:
                return super()._maybe_symbolic_build(iterator, data_batch)
            finally:
                self._distribute_strategy = None
        return super()._maybe_symbolic_build(iterator, data_batch)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """`keras.Model.export`, with hard-swish and hard-sigmoid written as
        single `HardSwish` / `HardSigmoid` nodes, global average pooling
        as `GlobalAveragePool` and the input rescaling's multiply inside the
        stem's kernel in ONNX files (tf2onnx writes each activation as a
        chain of 3-4 nodes that onnxruntime runs one by one, both exporters
        the pooling as a `ReduceMean` it runs outside its blocked layout;
        see `export_graph`), on JAX the depthwise and 1x1 convolutions
        exported as such (`depthwise_as_conv`, `pointwise_as_conv`), and
        LiteRT files on TensorFlow written from the frozen forward instead of
        a SavedModel with variables (`litert_export`: the forward traced
        once, not three times)."""
        from .depthwise_conv import depthwise_as_conv
        from .utils import fixed_sizes_when_traced, pointwise_as_conv

        if format == "litert" and _TENSORFLOW:
            from .litert_export import export_litert

            return export_litert(self, filepath, input_signature=input_signature,
                                 verbose=verbose, **kwargs)
        onnx, fixed = format == "onnx", _fixed_sizes(self, input_signature)
        jax = keras.backend.backend() == "jax"
        try:
            with depthwise_as_conv(self, enabled=onnx and jax), pointwise_as_conv(jax), \
                    fixed_sizes_when_traced(onnx and fixed):
                result = super().export(filepath, format=format, verbose=verbose,
                                        input_signature=input_signature, **kwargs)
        except Exception as error:
            if onnx and jax and not fixed and type(error).__name__ == "InconclusiveDimensionOperation":
                shapes = [tuple(i.shape) for i in self.inputs]
                raise ValueError(
                    f"ONNX export from JAX of a model with free input sizes {shapes}: jax2onnx "
                    "needs the padding of every convolution as numbers, and TensorFlow SAME "
                    "padding (keras.applications-style models) depends on the size. Build the "
                    "model with a fixed size (`input_shape=(224, 224, 3)`, weights load the "
                    "same), or export from the TensorFlow or torch backend, which keep the "
                    "sizes free.") from error
            raise
        if onnx:
            from .export_graph import rewrite_onnx_file

            rewrite_onnx_file(str(filepath))
        return result


def _jax_variables(model):
    """`model`'s trainable and non-trainable variables, as Keras lists them,
    kept on the model while its layers, their `trainable` flags and their own
    variable lists are unchanged (Keras collects them anew through every
    layer on each call: at batch 1 more than a tenth of V3 small's
    `predict_on_batch` on JAX). None where Keras' own path is needed: a layer
    not built, a variable not initialised, inside a stateless or autocast
    scope."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if in_stateless_scope() or get_autocast_scope() is not None:
        return None
    layers = list(model._flatten_layers())
    if not all(layer.built for layer in layers):
        return None
    key = tuple((id(layer), layer._trainable, len(layer._trainable_variables),
                 len(layer._non_trainable_variables), len(layer._seed_generators))
                for layer in layers)
    kept = model.__dict__.get("_jax_variables_kept")
    if kept is not None and kept[0] == key and all(
            v.trainable for v in kept[1][0]) and not any(v.trainable for v in kept[1][1]):
        return kept[1]
    variables = (model.trainable_variables, model.non_trainable_variables)
    if any(v._value is None for group in variables for v in group):
        return None
    object.__setattr__(model, "_jax_variables_kept", (key, variables))  # a cache, untracked
    return variables


@contextlib.contextmanager
def _jax_steps_with_speed_options(model):
    """While this runs, Keras' JAX trainer jits the steps it makes with
    `compile_memory.cpu_speed_options()` (on XLA:CPU: full convolutions in
    XLA's own kernels). Keras passes no compile options to `jax.jit`, and
    its step wrappers (outputs, state, sharding) stay its own this way."""
    options = None
    if keras.backend.backend() == "jax" and model.jit_compile and not model.run_eagerly:
        from keras.src.backend.config import is_nnx_enabled

        from .compile_memory import cpu_speed_options

        options = None if is_nnx_enabled() else cpu_speed_options()  # NNX: Flax's own jit
    if not options:
        yield
        return
    from keras.src.backend.jax import trainer

    jit = trainer.jit
    trainer.jit = functools.partial(jit, compiler_options=options)
    try:
        yield
    finally:
        trainer.jit = jit


def _jax_predict_step(model):
    """`model`'s inference as one jitted function of its variables' values and a
    batch: the outputs, and {index: value} of the non-trainable variables a layer
    assigned (a traced value that is not the one passed in); compiled with
    `cpu_speed_options`."""
    import jax

    from .compile_memory import cpu_speed_options

    kwargs = {"training": False} if model._call_has_training_arg else {}

    def step(trainable, non_trainable, x):
        outputs, new = model.stateless_call(trainable, non_trainable, x, **kwargs)
        return outputs, {i: n for i, (n, o) in enumerate(zip(new, non_trainable)) if n is not o}

    return jax.jit(step, compiler_options=cpu_speed_options() or None)


def _fixed_sizes(model, input_signature=None):
    """Whether every input has all its sizes but the batch's fixed."""
    specs = keras.tree.flatten(input_signature if input_signature is not None else model.inputs)
    shapes = [tuple(getattr(spec, "shape", ()) or ()) for spec in specs]
    return bool(shapes) and all(d is not None for shape in shapes for d in shape[1:])
