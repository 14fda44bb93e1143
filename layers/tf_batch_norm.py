"""Training BatchNorm on TensorFlow as its fused kernel.

`batch_norm_train(x, gamma, beta, epsilon)` is the training BatchNorm of
`ConvBnAct` and of `layers.quantization.BatchNormalization` (the standalone
one) on TensorFlow (NHWC): TensorFlow's `FusedBatchNormV3`,
one kernel forward and one (`FusedBatchNormGradV3`) backward, which keeps
only the input and two per-channel vectors for the backward pass. Written
with `keras.ops`, the statistics and the normalisation are several
elementwise passes whose gradients each make feature-map-sized temporaries
(peak memory of a training step: `docs/training_memory.md`). Under
mixed precision the kernel takes the float16 / bfloat16 map as it is and
computes the statistics in float32, where the `keras.ops` route kept a
float32 copy of the map for the backward pass.

`batch_norm_act_train(x, gamma, beta, epsilon, activation)` is the same
BatchNorm with hard-swish or exact GELU after it, as one gradient: its
backward pass keeps only the BatchNorm input (and the per-channel vectors)
and recomputes the activation's input from it with the inference kernel,
one pass over the map. The BatchNorm and the activation separately kept
both the BatchNorm input (its kernel's backward) and its output (the
activation's), so every such unit kept one feature map more than timm's
on torch (which keeps three there, as we did; our torch route already
recomputes it: `layers.torch_batch_norm`). Measured in
`docs/training_memory.md`.

`batch_norm_act_conv_train(x, ..., activation, conv, weights)` goes one
layer further: the next convolution of the activated map too, so that its
backward pass keeps only `x` where the BatchNorm, the activation and the
next convolution kept `x` and the activated map (the convolution's input,
which ReLU's own backward reads too). Blocks chain their units this way
(`layers.conv_bn_act.run_units`); timm on torch keeps both maps.

Called through `tf.raw_ops` because `tf.nn.fused_batch_norm` raises epsilon
to at least 1.001e-5 (a cuDNN limit), which would change MobileNetV4's 1e-5.
"""

import tensorflow as tf
from keras import ops

from .utils import after_upstream, batch_norm_scale_shift, gelu_slope, hard_swish_slope

_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def takes(x):
    """Whether `x` is a TensorFlow tensor the fused kernel normalises."""
    return isinstance(x, tf.Tensor) and x.dtype in _DTYPES


def _batch_statistics(x, mean, variance):
    """The batch mean and the biased variance (Keras' moving variance
    averages the biased one; the kernel returns it with Bessel's correction,
    n / (n - 1)), without gradient."""
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    variance = variance * tf.maximum(count - 1.0, 1.0) / count
    return tf.stop_gradient(mean), tf.stop_gradient(variance)


def _fused(x, gamma, beta, epsilon, mean=None, variance=None):
    """`FusedBatchNormV3` on NHWC `x`: batch statistics without `mean` and
    `variance`, those (inference) with them."""
    training = mean is None
    empty = tf.constant([], tf.float32)  # no moving statistics in training
    return tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty if training else mean,
        variance=empty if training else variance, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=training,
    )


def batch_norm_train(x, gamma, beta, epsilon):
    """Normalise `x` (NHWC; float32, float16 or bfloat16) by its batch
    statistics; `gamma` and `beta` are float32.

    Returns the output, the batch mean and the biased batch variance (Keras'
    moving variance averages the biased one), the two statistics without
    gradient.
    """
    y, mean, variance, _, _, _ = _fused(x, gamma, beta, epsilon)
    return (y, *_batch_statistics(x, mean, variance))


# activation name: (forward, derivative), both of the BatchNorm output; the
# forwards are those of layers.activations' HardSwish and GELU.
_ACTIVATIONS = {
    "hard_swish": (ops.hard_silu, hard_swish_slope),
    "gelu": (lambda y: ops.gelu(y, approximate=False), gelu_slope),
}
ACTIVATIONS = tuple(_ACTIVATIONS)

# activation name: (forward, derivative) for batch_norm_act_conv_train; None:
# no activation. ReLU's and ReLU6's backward is their own kernel reading the
# activated map (`_READS_OUTPUT`).
_CHAINED = {
    **_ACTIVATIONS,
    None: (lambda y: y, None),
    "relu": (tf.nn.relu, tf.raw_ops.ReluGrad),
    "relu6": (tf.nn.relu6, tf.raw_ops.Relu6Grad),
}
CHAINED = tuple(_CHAINED)


# Maps of at least this many elements per image are rebuilt by XLA (`_rebuild`).
_XLA_MIN_ELEMENTS = 2**18


_READS_OUTPUT = (None, "relu", "relu6")


def _rebuild(activation):
    """The backward pass's `(activated map, what its backward reads)` from the
    BatchNorm input and the per-channel `scale`, `shift` of the batch, as one
    XLA-compiled pass over the map: as TensorFlow's own ops, the BatchNorm
    and the activation were two passes and a derivative several more (V2's
    step 1.14x against 1.09x the plain one, one run each). XLA's compiler
    costs the process memory once (V3 small's peak 0.71-0.74 against
    0.66-0.67 GB), so only large maps take this route."""
    forward, derivative = _CHAINED[activation]
    reads_output = activation in _READS_OUTPUT

    @tf.function(jit_compile=True, autograph=False)
    def rebuild(x, scale, shift):
        y = tf.cast(tf.cast(x, tf.float32) * scale + shift, x.dtype)
        activated = forward(y)
        return activated, activated if reads_output else derivative(y)

    return rebuild


_REBUILD = {name: _rebuild(name) for name in _CHAINED}


def batch_norm_act_train(x, gamma, beta, epsilon, activation):
    """`activation(batch_norm_train(x, ...))` keeping only `x` and
    per-channel vectors for the backward pass; `activation` is one of
    `ACTIVATIONS`. Returns the output, the batch mean and the biased batch
    variance, as `batch_norm_train`."""
    forward, slope = _ACTIVATIONS[activation]

    @tf.custom_gradient
    def unit(x, gamma, beta):
        y, mean, variance, saved_mean, saved_var, reserve = _fused(x, gamma, beta, epsilon)
        biased = _batch_statistics(x, mean, variance)[1]

        def grad(upstream, *_statistics):
            # The activation's input again: the inference kernel with the
            # batch's statistics is the training output up to float rounding.
            # Only once the upstream gradient exists (`after_upstream`: why).
            y = _fused(after_upstream(upstream, x), gamma, beta, epsilon, mean, biased)[0]
            dy = upstream * slope(y)
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=gamma, reserve_space_1=saved_mean,
                reserve_space_2=saved_var, reserve_space_3=reserve, epsilon=epsilon,
                data_format="NHWC", is_training=True,
            )
            return dx, dgamma, dbeta

        return (forward(y), mean, biased), grad

    out, mean, variance = unit(x, gamma, beta)
    return out, tf.stop_gradient(mean), tf.stop_gradient(variance)


def batch_norm_act_conv_train(x, gamma, beta, epsilon, activation, conv, weights):
    """`conv(activation(batch_norm_train(x, ...)), *weights)` keeping only `x`,
    `weights` and per-channel vectors for the backward pass; `activation` is
    one of `CHAINED`, `conv(inputs, *weights)` a convolution. Returns the
    convolution's output, the batch mean and the biased batch variance, as
    `batch_norm_train`."""
    forward, derivative = _CHAINED[activation]
    rebuild = _REBUILD[activation]

    @tf.custom_gradient
    def unit(x, gamma, beta, *weights):
        y, mean, variance, saved_mean, saved_var, reserve = _fused(x, gamma, beta, epsilon)
        biased = _batch_statistics(x, mean, variance)[1]

        def grad(upstream, *_statistics):
            x_again = after_upstream(upstream, x)
            if (x.shape[1:].num_elements() or 0) >= _XLA_MIN_ELEMENTS:
                scale, shift = batch_norm_scale_shift(gamma, beta, mean, biased, epsilon)
                inputs, read = rebuild(x_again, scale, shift)
            else:  # the inference kernel with the batch's statistics
                y = _fused(x_again, gamma, beta, epsilon, mean, biased)[0]
                inputs = forward(y)
                read = inputs if activation in _READS_OUTPUT else derivative(y)
            # The convolution's gradients read its input and weights, not its
            # output: the recomputed forward convolution is never run.
            with tf.GradientTape() as tape:
                tape.watch([inputs, *weights])
                outputs = conv(inputs, *weights)
            d_inputs, *d_weights = tape.gradient(
                outputs, [inputs, *weights], output_gradients=upstream)
            if derivative is None:
                dy = d_inputs
            elif activation in _READS_OUTPUT:
                dy = derivative(gradients=d_inputs, features=read)
            else:
                dy = d_inputs * read
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=gamma, reserve_space_1=saved_mean,
                reserve_space_2=saved_var, reserve_space_3=reserve, epsilon=epsilon,
                data_format="NHWC", is_training=True,
            )
            return (dx, dgamma, dbeta, *d_weights)

        return (conv(forward(y), *weights), mean, biased), grad

    out, mean, variance = unit(x, gamma, beta, *weights)
    return out, tf.stop_gradient(mean), tf.stop_gradient(variance)
