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

Called through `tf.raw_ops` because `tf.nn.fused_batch_norm` raises epsilon
to at least 1.001e-5 (a cuDNN limit), which would change MobileNetV4's 1e-5.
"""

import tensorflow as tf

_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def takes(x):
    """Whether `x` is a TensorFlow tensor the fused kernel normalises."""
    return isinstance(x, tf.Tensor) and x.dtype in _DTYPES


def batch_norm_train(x, gamma, beta, epsilon):
    """Normalise `x` (NHWC; float32, float16 or bfloat16) by its batch
    statistics; `gamma` and `beta` are float32.

    Returns the output, the batch mean and the biased batch variance (Keras'
    moving variance averages the biased one), the two statistics without
    gradient.
    """
    empty = tf.constant([], tf.float32)  # no moving statistics in training
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
    )
    # The kernel returns the variance with Bessel's correction (n / (n - 1)).
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    variance = variance * tf.maximum(count - 1.0, 1.0) / count
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)
