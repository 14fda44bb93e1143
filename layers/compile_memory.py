"""Give XLA's compile-time memory back to the system before a JAX step runs.

On JAX, the first call of Keras' train function compiles the step and then
runs it. Compiling takes more memory than the step's own buffers (V3 small
at batch 32: about 0.8 GB, against 0.60 GB of buffers in XLA's memory
analysis), and glibc keeps what XLA frees in its heap instead of returning
it, so the step's buffers came on top of it: the training peak was the
compile's and the step's together. `trimming_after_compile` wraps a train
function so that when JAX finishes a backend compile inside it, glibc's
`malloc_trim` returns the free heap first (peak measured in
`benchmarks/README.md`, training memory). Compiles outside the wrapped
function are left alone; where there is no glibc it does nothing.

`memory_scheduled_train_step` compiles the step itself with XLA:CPU's
memory-optimising scheduler instead of its default, which orders the
step's operations for concurrency and so keeps more activations alive at
once (XLA's memory analysis of a V3 small step at batch 32: 0.547 GB of
temporaries against 0.376; step times in the benchmarks' README). A small
step (V3 small, V4 conv_small at batch 32) it compiles with XLA:CPU's
elemental kernel emitters instead of its MLIR fusion emitters, which hold
memory for every kernel until the whole step is compiled (about 0.5 GB for
a V3 small step's 960 kernels), more than such a step's own buffers. A
larger step's buffers outweigh that, and there the MLIR emitters' kernels
ran some steps faster (V4 hybrid_large); `step_compiler_options` decides
by XLA's cost analysis of the step before it is compiled (figures in
`docs/training_memory.md`).

Every step this library compiles on XLA:CPU (training, `predict`,
`evaluate`, `predict_on_batch`) leaves full convolutions to XLA's own
(Eigen) kernels instead of YNNPACK, which it keeps for matrix products and
reductions, as XLA does by default (`cpu_speed_options`). YNNPACK ran a
batch of 32 through a 3x3 convolution at 112x112 (32 channels, stride 2)
4.3x slower than Eigen, and its kernel gradients up to 4.6x slower
(measured in `docs/speed.md`).
"""

import ctypes
import ctypes.util

_COMPILED = "/jax/core/compile/backend_compile_duration"
_state = {"active": 0, "listening": False, "trim": None, "options": None}
_ELEMENTAL = "xla_cpu_use_fusion_emitters"
# XLA's default library fusions (jaxlib 0.10: individual dots and
# convolutions, reductions) but the convolutions.
_SPEED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                  "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_CPU_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", _ELEMENTAL: False,
                **_SPEED_OPTIONS}
# Bytes the unfused step reads and writes (XLA's cost analysis) below which
# its buffers are smaller than what the MLIR emitters hold while compiling:
# V4 conv_small, V3 small at batch 32: 39 and 42e9 (buffers 0.28, 0.25 GB);
# V1 98e9 (1.09 GB), V4 hybrid_large 1873e9 (5.7 GB).
_ELEMENTAL_BELOW_BYTES = 75e9


def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, or none found)."""
    if _state["trim"] is None:
        trim = False
        name = ctypes.util.find_library("c")
        if name:
            try:
                trim = ctypes.CDLL(name).malloc_trim
            except (OSError, AttributeError):
                trim = False
        _state["trim"] = trim
    return _state["trim"] or None


def _after_event(event, duration_secs=None, **kwargs):
    if event == _COMPILED and _state["active"]:
        _malloc_trim()(0)


def trimming_after_compile(fn):
    """`fn`, returning the free C heap to the system after each JAX backend
    compile that happens while it runs; `fn` itself where glibc is absent."""
    if _malloc_trim() is None:
        return fn
    if not _state["listening"]:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_after_event)
        _state["listening"] = True

    def call(*args, **kwargs):
        _state["active"] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state["active"] -= 1

    call.__wrapped__ = fn
    return call


def cpu_compiler_options():
    """XLA compile options for a small train step on the CPU backend: the
    memory-optimising scheduler, the elemental kernel emitters and
    `cpu_speed_options`, those of them this jaxlib knows; otherwise
    (another backend) {}."""
    if _state["options"] is None:
        import jax

        options = {}
        if jax.default_backend() == "cpu":
            for name, value in _CPU_OPTIONS.items():
                try:  # an older jaxlib rejects an option (or `compiler_options`)
                    trial = {**options, name: value}
                    jax.jit(lambda x: x + 1, compiler_options=trial).lower(1.0).compile()
                    options = trial
                except Exception:
                    pass
        _state["options"] = options
    return _state["options"]


def cpu_speed_options():
    """XLA compile options for any step on the CPU backend: full
    convolutions in XLA's own kernels, not YNNPACK's ({} where this jaxlib
    or backend has no such option)."""
    return {k: v for k, v in cpu_compiler_options().items() if k in _SPEED_OPTIONS}


def step_compiler_options(lowered):
    """`cpu_compiler_options()` for the lowered step `lowered`, without the
    elemental emitters where XLA's cost analysis puts the step at or above
    `_ELEMENTAL_BELOW_BYTES` (or has no figure)."""
    options = dict(cpu_compiler_options())
    if _ELEMENTAL in options:
        try:
            accessed = (lowered.cost_analysis() or {}).get("bytes accessed")
        except Exception:  # a backend without a cost model
            accessed = None
        if accessed is None or accessed >= _ELEMENTAL_BELOW_BYTES:
            del options[_ELEMENTAL]
    return options


class _StepCompiledPerShape:
    """A jitted train step compiled once per shape of its data batch, with
    the compile options `step_compiler_options` picks for that step."""

    def __init__(self, jitted):
        self.jitted = jitted
        self.compiled = {}

    def compiled_for(self, state, data):
        import jax

        leaves, treedef = jax.tree.flatten(data)
        key = (treedef, tuple((getattr(v, "shape", ()), str(getattr(v, "dtype", type(v))))
                              for v in leaves))
        if key not in self.compiled:
            lowered = self.jitted.lower(state, data)
            self.compiled[key] = lowered.compile(step_compiler_options(lowered))
        return self.compiled[key]

    def __call__(self, state, data):
        return self.compiled_for(state, data)(state, data)


def memory_scheduled_train_step(model):
    """`model.train_step` jitted as Keras' JAX trainer jits it (state
    donated) and compiled with `step_compiler_options`; None where Keras
    would not jit it so (run eagerly, `jit_compile=False`, a distribution,
    Flax NNX) or there are no options to add."""
    import jax
    from keras.src.backend.config import is_nnx_enabled
    from keras.src.distribution import distribution_lib

    if model.run_eagerly or not model.jit_compile:
        return None
    if distribution_lib.distribution() is not None or is_nnx_enabled():
        return None
    if not cpu_compiler_options():
        return None
    return _StepCompiledPerShape(jax.jit(model.train_step, donate_argnums=0))
