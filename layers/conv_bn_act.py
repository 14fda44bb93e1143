"""Convolution -> BatchNorm -> activation, the unit every MobileNet is made of."""

import contextlib

import keras
from keras import ops

from .activations import get_activation, torch_function
from .anti_alias import anti_alias_layer, check_anti_alias
from .conv import Conv
from .depthwise_conv import DepthwiseConv
from .fast_call import FastCall, eager_torch_inference, kept
from .normalization import check_norm, get_norm
from .utils import (
    batch_norm_scale_shift,
    check_padding,
    declare,
    torch_conv_nhwc,
    torch_conv_weight,
)

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch

    from .torch_batch_norm import RECOMPUTED, batch_norm_act

# The backend's BatchNorm + activation + next convolution as one gradient
# (`ConvBnAct.conv_after`); torch has none (eagerly timm's peak already).
chained_units = None
if keras.backend.backend() == "tensorflow":
    from . import tf_batch_norm as chained_units
elif keras.backend.backend() == "jax":
    from . import jax_batch_norm as chained_units

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBnAct(FastCall, keras.layers.Layer):
    """A full or depthwise convolution followed by BatchNorm and an activation.

    In inference (and in a frozen BatchNorm, which also uses its moving
    statistics) the BatchNorm is folded into the convolution's kernel and
    bias; the weights stay those of the separate `conv` and `bn` sublayers.

    Args:
        filters: output channels of a full convolution. Ignored when
            `depthwise=True` (the output has `in_channels * depth_multiplier`).
        kernel_size: square kernel size.
        strides: square stride.
        depthwise: use a depthwise convolution.
        depth_multiplier: channel multiplier of a depthwise convolution.
        use_bias: give the convolution a bias.
        use_bn: follow the convolution with BatchNormalization.
        activation: activation name (see `layers.activations.ACTIVATIONS`)
            or None.
        padding: "same" (TensorFlow SAME, as keras.applications) or
            "symmetric" (`kernel_size // 2` on every side, as timm). The two
            differ only for strided convolutions.
        bn_epsilon: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (Keras convention).
        norm: "batch" (BatchNormalization, sublayer `bn`) or "rms"
            (`RMSNorm2D` with epsilon `bn_epsilon`, sublayer `norm`; never
            folded, MobileNetV5).
        anti_alias: with a stride above 1, convolve at stride 1 and
            downsample after the activation by 2x2 average pooling ("avg")
            or a binomial blur ("blur"), as timm's anti-aliased
            MobileNetV4s; None for a plain strided convolution.
        timm_names: timm's names of the convolution and the BatchNorm,
            relative to the enclosing block (timm's `ConvBnAct` by default).
            torchvision's are `0` and `1` (its `Conv2dNormActivation`).
        reference_names: the reference names of this layer itself (see
            `layers.utils.declare`).
    """

    # Training on TensorFlow and JAX: recompute the activated map for the next
    # unit's convolution (`run_units`); `keep_activations` switches it off.
    recompute_activation = True

    def __init__(
        self,
        filters=None,
        kernel_size=1,
        strides=1,
        depthwise=False,
        depth_multiplier=1,
        use_bias=False,
        use_bn=True,
        activation=None,
        padding="same",
        bn_epsilon=1e-3,
        bn_momentum=0.99,
        anti_alias=None,
        norm="batch",
        timm_names=("conv", "bn1"),
        reference_names=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.timm_names = tuple(timm_names)
        if not depthwise and not filters:
            raise ValueError(f"A full convolution needs filters > 0, got {filters!r}.")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.depthwise = depthwise
        self.depth_multiplier = depth_multiplier
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.activation = activation
        self.padding = check_padding(padding)
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.norm_type = check_norm(norm)
        self.anti_alias = check_anti_alias(anti_alias) if strides > 1 else None
        conv_strides = 1 if self.anti_alias else strides
        # Symmetric and SAME padding agree for stride 1 and odd kernels, where
        # the cheaper built-in "same" is used.
        explicit_pad = padding == "symmetric" and conv_strides > 1 and kernel_size > 1
        conv_padding = "valid" if explicit_pad or kernel_size == 1 else "same"
        pad = kernel_size // 2 if explicit_pad else 0
        if depthwise:
            self.conv = DepthwiseConv(
                kernel_size,
                strides=conv_strides,
                padding=conv_padding,
                symmetric_padding=pad,
                depth_multiplier=depth_multiplier,
                use_bias=use_bias,
                name="conv",
            )
        else:
            self.conv = Conv(
                filters,
                kernel_size,
                strides=conv_strides,
                padding=conv_padding,
                symmetric_padding=pad,
                use_bias=use_bias,
                name="conv",
            )
        self.bn = None
        if use_bn:
            norm_name = "bn" if self.norm_type == "batch" else "norm"
            self.bn = get_norm(self.norm_type, bn_epsilon, bn_momentum, norm_name)
        self.act = get_activation(activation, "act")
        self.aa = anti_alias_layer(self.anti_alias) if self.anti_alias else None
        declare(self, **{"timm": "", **(reference_names or {})})
        # torchvision's Conv2dNormActivation is `Sequential(conv, norm, act)`.
        declare(self.conv, timm=self.timm_names[0], torchvision="0")
        if self.bn is not None:
            declare(self.bn, timm=self.timm_names[1], torchvision="1")

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None):
        if self.bn is None:
            x = self.conv(x)
        elif self.norm_type == "rms":
            x = self.bn(self.conv(x))
        elif training and self.bn.trainable:
            return self.train_after_conv(self.conv(x))
        elif (self.conv.quantization_mode is None and self.conv.data_format == "channels_last"
              and eager_torch_inference(x)):
            return self._torch_inference(x)
        elif self._compiled_pointwise(x):
            x = self._compiled_pointwise_conv(x)
            return x if self.aa is None else self.aa(x)
        else:
            x = self._folded_conv(x)
        if self.act is not None:
            x = self.act(x)
        if self.aa is not None:
            x = self.aa(x)
        return x

    def train_after_conv(self, x):
        """The training-mode normalisation, activation and anti-aliasing of
        this unit's convolution output `x`."""
        bn = self.bn
        if bn is not None and self.norm_type == "batch" and bn.trainable:
            if self._torch_trains_fused(x) and (torch.compiler.is_compiling()
                                                or self.activation in RECOMPUTED):
                x = self._torch_batch_norm_train(x, self.activation or "linear")
                return x if self.aa is None else self.aa(x)
            # TensorFlow: BatchNorm and hard-swish / GELU as one gradient that
            # keeps one feature map less (layers.tf_batch_norm).
            y = bn.fused_training(x, self.activation) if self.act is not None else None
            if y is not None:
                return y if self.aa is None else self.aa(y)
            x = self._batch_norm_train(x)
        elif bn is not None:
            x = bn(x) if self.norm_type == "rms" else bn(x, training=False)
        if self.act is not None:
            x = self.act(x)
        return x if self.aa is None else self.aa(x)

    def chains_into(self, following, x):
        """Whether, training on TensorFlow or JAX, this unit's BatchNorm and
        activation can be one gradient with `following`'s convolution
        (`conv_after`); `x` is this unit's input (its type and dtype are
        read)."""
        bn = self.bn
        return (chained_units is not None and self.recompute_activation
                and isinstance(following, ConvBnAct)
                and bn is not None and self.norm_type == "batch" and bn.trainable
                and bn.gamma is not None and bn.beta is not None and self.aa is None
                and self.activation in chained_units.CHAINED and chained_units.takes(x)
                and following.conv.quantization_mode is None
                and following.conv.data_format == "channels_last")

    def conv_after(self, previous, x):
        """This unit's convolution of `previous`'s training BatchNorm and
        activation of `x` (`previous`'s convolution output), as one gradient
        that keeps only `x` (`batch_norm_act_conv_train` of
        `layers.tf_batch_norm` / `layers.jax_batch_norm`);
        `previous.chains_into(self, x)` must hold."""
        bn = previous.bn
        weights = [ops.cast(self.conv.kernel, x.dtype)]
        if self.conv.use_bias:
            weights.append(ops.cast(self.conv.bias, x.dtype))
        z, mean, variance = chained_units.batch_norm_act_conv_train(
            x, ops.cast(bn.gamma, "float32"), ops.cast(bn.beta, "float32"), bn.epsilon,
            previous.activation, self.conv.convolution_op, weights)
        bn.update_moving_statistics(mean, variance)
        return z

    def _batch_norm_train(self, x):
        """Training-mode BatchNorm, as one multiply-add on the feature map.

        The batch statistics and moving-average updates of
        `keras.layers.BatchNormalization`, in float32 as there, but the
        normalisation is `x * a + b` (`a`, `b` per channel) instead of Keras'
        `(x - mean) * a + beta`. Backpropagation then keeps only `x`, which
        the variance keeps anyway, where Keras keeps `x` and `x - mean`: one
        feature map less per unit (measured in `benchmarks/README.md`).
        Exact up to float32 rounding. On torch, float32, it is torch's own
        `native_batch_norm` (`_torch_batch_norm_train`); on TensorFlow
        TensorFlow's fused kernel (`layers.tf_batch_norm`; float32 statistics
        for float16 and bfloat16 inputs too).
        """
        bn = self.bn
        if self._torch_trains_fused(x):
            return self._torch_batch_norm_train(x)
        y = bn.fused_training(x)
        if y is not None:
            return y
        x32 = ops.cast(x, "float32")
        mean, variance = ops.moments(x32, axes=[0, 1, 2])
        bn.update_moving_statistics(mean, variance)
        a, b = batch_norm_scale_shift(ops.cast(bn.gamma, "float32"),
                                      ops.cast(bn.beta, "float32"), mean, variance, bn.epsilon)
        return ops.cast(x32 * a + b, x.dtype)

    def _torch_trains_fused(self, x):
        """Whether training BatchNorm runs as torch's own kernels
        (`_torch_batch_norm_train`): torch, float32, BatchNorm with scale and
        offset."""
        return (_TORCH and isinstance(x, torch.Tensor) and x.dtype == torch.float32
                and self.bn.gamma is not None and self.bn.beta is not None)

    def _torch_batch_norm_train(self, x, activation="linear"):
        """Training-mode BatchNorm as torch's fused kernel, forward and
        backward, then `activation` (given under torch.compile, and eagerly
        for `torch_batch_norm.RECOMPUTED`). Keras'
        ops compute it in several passes over the feature map, each backward
        pass keeping its own full-size temporaries (time and memory measured
        in `benchmarks/README.md`). Under torch.compile BatchNorm and the
        activation are one operator of ours, opaque to Inductor
        (`layers.torch_batch_norm`: why); eagerly too where the operator
        recomputes the activation's input (hard-swish, GELU: one feature map
        per unit less; V3 large at batch 32 peaked 1.58 against 1.79 GB, the
        step as fast). Otherwise eagerly the kernel is called
        directly: the operator's Python autograd made an eager V4
        conv_medium step at batch 32 slower (1.70-1.80 against 1.58-1.60 s)
        and its peak 0.2-0.4 GB higher with the same tensors saved. torch's
        running statistics use the unbiased variance; Keras' moving variance
        the biased one, so the moving averages are updated here from the
        batch mean and `1 / sqrt(var + eps)` the kernel returns."""
        bn = self.bn
        nchw = x.permute(0, 3, 1, 2)
        if torch.compiler.is_compiling() or activation != "linear":
            y, mean, invstd = batch_norm_act(nchw, bn.gamma.value, bn.beta.value, bn.epsilon,
                                             activation)
        else:
            y, mean, invstd = torch.native_batch_norm(nchw, bn.gamma.value, bn.beta.value, None,
                                                      None, True, 0.0, bn.epsilon)
        with torch.no_grad():
            bn.update_moving_statistics(mean, invstd.pow(-2) - bn.epsilon)
        return y.permute(0, 2, 3, 1)

    def _folded_conv(self, x):
        """Convolution with the inference-mode BatchNorm folded into it.

        BatchNorm with moving statistics is the per-channel affine map
        `y * scale + shift`; applied to the kernel and bias (a few thousand
        numbers) instead of the activations, it saves three elementwise passes
        over the feature map (JAX fuses them either way). Exact up to float rounding, about 1e-6 of the output's scale.
        """
        kernel, shift = self._folded_weights(x)
        return self.conv.convolution_op(x, kernel, bias=shift)

    def _compiled_pointwise(self, x):
        """Whether this is a channels-last 1x1 convolution inside torch.compile
        (not an export)."""
        return (_TORCH and not self.depthwise and tuple(self.conv.kernel.shape[:2]) == (1, 1)
                and self.conv.data_format == "channels_last"
                and isinstance(x, torch.Tensor) and x.ndim == 4
                and torch.compiler.is_compiling() and not torch.compiler.is_exporting())

    def _compiled_pointwise_conv(self, x):
        """A 1x1 convolution, its inference BatchNorm and activation, compiled.

        A compiled graph would fold the kernel again on every call (all the
        model's weights, read and written: at batch 1 more than the
        convolutions' own work), so the output is scaled per channel instead,
        fused with the activation. Only for 1x1 convolutions: on the depthwise
        and the stem it made compiled V3 small slower at batch 1 and 32
        (docs/torch_backend.md). Exported graphs keep the folded kernels.

        The scaling and the activation are written on the NCHW view of the
        output: on the channels-last view Inductor (CPU) stored the scaled
        map before the activation, in a layout of its own (height innermost),
        transposing it on the way in and out (docs/torch_backend.md).
        """
        scale, shift = self._batch_norm_affine()
        y = self.conv.convolution_op(x, ops.cast(self.conv.kernel, x.dtype), bias=None)
        nchw = y.permute(0, 3, 1, 2).to(torch.float32)
        nchw = (nchw * scale[:, None, None] + shift[:, None, None]).to(y.dtype)
        act = torch_function(self.act)
        if act is not None:
            nchw = act(nchw)
        y = nchw.permute(0, 2, 3, 1)
        return y if act is not None or self.act is None else self.act(y)

    def _batch_norm_affine(self):
        """Inference BatchNorm (after the convolution's bias) as `y * scale +
        shift`, per channel, in float32."""
        bn, conv = self.bn, self.conv
        f32 = lambda v: ops.cast(v, "float32")  # noqa: E731
        scale, shift = batch_norm_scale_shift(f32(bn.gamma), f32(bn.beta), f32(bn.moving_mean),
                                              f32(bn.moving_variance), bn.epsilon)
        if conv.use_bias:
            shift = shift + f32(conv.bias) * scale
        return scale, shift

    def _folded_weights(self, x):
        """The BatchNorm-folded kernel and bias, in the dtype of `x`."""
        scale, shift = self._batch_norm_affine()
        kernel = ops.cast(self.conv.kernel, "float32")
        # Depthwise kernels are (kh, kw, in, multiplier), output channel = in * multiplier + m.
        kernel = kernel * ops.reshape(scale, kernel.shape[2:] if self.depthwise else (-1,))
        return ops.cast(kernel, x.dtype), ops.cast(shift, x.dtype)

    def _torch_inference(self, x):
        """Eager inference on torch: the folded convolution with its bias and
        the activation, each one torch call. The folded kernel, in the layout
        torch convolves fastest, is kept until a weight changes
        (`layers.fast_call.kept`): recomputing it with small `keras.ops`
        calls on every call was a large part of a batch-1 forward pass."""

        def plan():
            kernel, shift = self._folded_weights(x)
            weight = torch_conv_weight(kernel, self.depthwise).contiguous()
            return (weight, shift, torch_function(self.act)), self.weights

        weight, bias, act = kept(self, "_torch_plan", plan)
        conv = self.conv
        y = torch_conv_nhwc(x, weight, bias, conv.strides, conv.padding, conv.dilation_rate,
                            conv.symmetric_padding)
        if act is not None:
            y = act(y)
        elif self.act is not None:
            y = self.act(y)
        return y if self.aa is None else self.aa(y)

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape(input_shape)
        return shape if self.aa is None else self.aa.compute_output_shape(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            depthwise=self.depthwise,
            depth_multiplier=self.depth_multiplier,
            use_bias=self.use_bias,
            use_bn=self.use_bn,
            activation=self.activation,
            padding=self.padding,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            anti_alias=self.anti_alias,
            norm=self.norm_type,
            timm_names=list(self.timm_names),
            reference_names=dict(self.reference_names),
        )
        return config


def run_units(layers, x, training=None):
    """Call `layers` one after the other on `x`.

    Training on TensorFlow and JAX, a `ConvBnAct` directly followed by another has
    its BatchNorm and activation computed in one gradient with the next
    one's convolution (`ConvBnAct.conv_after`): the activated map between
    them is not kept for the backward pass but recomputed there, one
    feature map less per unit (`docs/training_memory_recompute.md`). Elsewhere this is
    the plain sequence.
    """
    previous = None  # a unit whose BatchNorm and activation wait for the next conv
    for layer, following in zip(layers, (*layers[1:], None)):
        chain = bool(training) and isinstance(layer, ConvBnAct) and layer.chains_into(following, x)
        if previous is None and not chain:
            x = layer(x, training=training)
            continue
        x = layer.conv_after(previous, x) if previous is not None else layer.conv(x)
        previous = layer if chain else None
        if not chain:
            x = layer.train_after_conv(x)
    return x


@contextlib.contextmanager
def keep_activations(model, enabled=True):
    """Train `model` keeping every activated map for the backward pass, as
    the layers called one by one do, instead of recomputing it
    (`run_units`). Chained, a batch-32 step took 0.97-1.08x the plain one's
    time on TensorFlow for 0.63-0.82x its tensors, and 0.96-1.02x on JAX
    (`docs/training_memory_recompute.md`). It takes effect where the training step is
    traced, so call `fit` (or the first `train_on_batch`) inside."""
    units = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
             if enabled and isinstance(layer, ConvBnAct)]
    for unit in units:
        unit.recompute_activation = False
    try:
        yield
    finally:
        for unit in units:
            del unit.recompute_activation
