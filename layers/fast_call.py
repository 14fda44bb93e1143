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
autocast scope. `training`, when the layer takes it and is not given it, is
taken from the enclosing Keras call, as `__call__` would. Anything else goes
through Keras' `__call__`.
"""

import keras
from keras.src.backend import get_autocast_scope
from keras.src.backend.common import global_state

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch


class FastCall:
    """Mixin: see the module docstring. Put it before the Keras base class."""

    def __call__(self, *args, **kwargs):
        if (
            _TORCH
            and args
            and self.built
            and isinstance(args[0], torch.Tensor)
            and args[0].dtype == torch.float32
            and self.compute_dtype == "float32"
            and self.variable_dtype == "float32"
            and getattr(self, "quantization_mode", None) is None
            and self._remat_mode is None
            and get_autocast_scope() is None
        ):
            if self._call_has_training_arg:
                if kwargs.get("training") is None:
                    context = global_state.get_global_attribute("current_call_ctx")
                    training = None if context is None else context.training
                    if training is not None:
                        kwargs["training"] = training
            else:
                kwargs.pop("training", None)
            return self.call(*args, **kwargs)
        return super().__call__(*args, **kwargs)
