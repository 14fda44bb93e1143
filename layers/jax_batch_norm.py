"""Training BatchNorm, activation and the next convolution on JAX, with the
activated map recomputed in the backward pass.

`batch_norm_act_conv_train(x, gamma, beta, epsilon, activation, conv,
weights)` is JAX's side of `ConvBnAct.conv_after` (TensorFlow's:
`layers.tf_batch_norm`): `conv(activation(batch_norm(x)), *weights)` with the
normalisation, the activation and the convolution under `jax.checkpoint`, so
the backward pass keeps `x` and per-channel vectors where the layers one by
one kept `x` (the statistics' backward), the activation's input (a
hard-swish's or GELU's backward) and its output (the convolution's kernel
gradient). XLA drops the recomputed convolution itself: its gradients read
its input and weights, not its output. The batch statistics stay outside
the checkpoint, computed once, as `ConvBnAct._batch_norm_train` computes
them.
"""

import jax
from keras import ops

from .activations import gelu_keeping_input
from .utils import batch_norm_scale_shift

# activation name (None: none) -> what layers.activations' layer computes in
# training on JAX (GELU's derivative is its own).
_FORWARD = {
    None: lambda y: y,
    "relu": ops.relu,
    "relu6": ops.relu6,
    "hard_swish": ops.hard_silu,
    "gelu": gelu_keeping_input,
}
CHAINED = tuple(_FORWARD)


def takes(x):
    """Whether `x` is a JAX array this route normalises."""
    return isinstance(x, jax.Array) and x.dtype in ("float32", "float16", "bfloat16")


def batch_norm_act_conv_train(x, gamma, beta, epsilon, activation, conv, weights):
    """Returns the convolution's output, the batch mean and the biased batch
    variance (float32, without gradient), as `tf_batch_norm`'s function."""
    forward = _FORWARD[activation]
    x32 = ops.cast(x, "float32")
    mean, variance = ops.moments(x32, axes=[0, 1, 2])

    def unit(x, mean, variance, gamma, beta, *weights):
        scale, shift = batch_norm_scale_shift(gamma, beta, mean, variance, epsilon)
        y = ops.cast(ops.cast(x, "float32") * scale + shift, x.dtype)
        return conv(forward(y), *weights)

    out = jax.checkpoint(unit)(x, mean, variance, gamma, beta, *weights)
    return out, ops.stop_gradient(mean), ops.stop_gradient(variance)
