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
temporaries against 0.376; step times in the benchmarks' README), and with
XLA:CPU's elemental kernel emitters instead of its MLIR fusion emitters,
which hold memory for every kernel until the whole step is compiled (a V3
small step has about 960 kernels; figures in `docs/training_memory.md`).
The two run the step alike now that the depthwise backward pass no longer
updates an input-sized buffer in place inside a loop, the one kind of
kernel the elemental emitters ran slower.
"""

import ctypes
import ctypes.util

_COMPILED = "/jax/core/compile/backend_compile_duration"
_state = {"active": 0, "listening": False, "trim": None, "options": None}
_CPU_OPTIONS = {
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "xla_cpu_use_fusion_emitters": False,
}


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
    """XLA compile options for a train step on the CPU backend: the
    memory-optimising scheduler and the elemental kernel emitters, those of
    them this jaxlib knows; otherwise (another backend) {}."""
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


def memory_scheduled_train_step(model):
    """`model.train_step` jitted as Keras' JAX trainer jits it (state
    donated), with `cpu_compiler_options()`; None where Keras would not jit
    it so (run eagerly, `jit_compile=False`, a distribution, Flax NNX) or
    there are no options to add."""
    import jax
    from keras.src.backend.config import is_nnx_enabled
    from keras.src.distribution import distribution_lib

    if model.run_eagerly or not model.jit_compile:
        return None
    if distribution_lib.distribution() is not None or is_nnx_enabled():
        return None
    options = cpu_compiler_options()
    if not options:
        return None
    return jax.jit(model.train_step, donate_argnums=0, compiler_options=options)
