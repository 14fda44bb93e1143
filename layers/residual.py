"""Shared plumbing of the residual blocks: BN/padding settings and the skip path."""

import keras

from .conv_bn_act import ConvBnAct, run_units
from .fast_call import FastCall
from .layer_scale import LayerScale
from .normalization import check_norm
from .squeeze_excite import SqueezeExcite
from .stochastic_depth import StochasticDepth
from .utils import check_padding, declare, make_divisible, stored_as_nhwc


class ResidualBlock(FastCall, keras.layers.Layer):
    """Base class of the MobileNet blocks (not used on its own).

    Holds the settings every block shares and applies the optional layer
    scale, stochastic depth and residual addition at the end of a block.
    Subclasses create their convolutions with `self.conv_bn_act(...)` in
    `build()` (where the input channel count is known) and hand them, in
    order, to `build_sequence`; the shared `call()` runs that sequence and
    `finish` (layer scale, drop path, skip). Blocks that are not a plain
    sequence (attention) override `call()` and end with `finish`.

    Args:
        activation: activation of the block's non-linear convolutions.
        padding: "same" (TensorFlow SAME) or "symmetric" (timm).
        bn_epsilon: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (Keras convention).
        norm: the norm of the block's convolutions, "batch" or "rms" (see
            `ConvBnAct`; `bn_epsilon` is then the RMSNorm epsilon).
        layer_scale_init: initial value of a per-channel scale on the
            branch output, or None for no layer scale.
        drop_path_rate: stochastic depth rate of the residual branch.
        residual: add the input to the output when shapes allow.
        anti_alias: anti-aliased strided convolutions (see `ConvBnAct`).
        se_activation: activation inside squeeze-excite; None for the
            block's (timm's `mobilenetv3_rw`).
        se_rounding: squeeze-excite width `channels * ratio` rounded to a
            multiple of 8 ("divisible", keras.applications and timm's V3)
            or to the nearest integer ("round", `mobilenetv3_rw`).
        reference_names: the reference names of this block (see
            `layers.utils.declare`), e.g. `{"timm": "blocks.2.0",
            "torchvision": "features.3.block"}`; its sub-layers' torchvision
            names are their positions in the branch
            (`_declare_torchvision_positions`).
    """

    def __init__(
        self,
        activation="relu",
        padding="same",
        bn_epsilon=1e-3,
        bn_momentum=0.99,
        norm="batch",
        layer_scale_init=None,
        drop_path_rate=0.0,
        residual=True,
        anti_alias=None,
        se_activation="relu",
        se_rounding="divisible",
        reference_names=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        declare(self, **(reference_names or {}))
        self.activation = activation
        self.padding = check_padding(padding)
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.norm_type = check_norm(norm)
        self.layer_scale_init = layer_scale_init
        self.drop_path_rate = drop_path_rate
        self.residual = residual
        self.anti_alias = anti_alias
        self.se_activation = se_activation
        self.se_rounding = se_rounding
        self.has_skip = False
        self.layer_scale = None
        self.drop_path = None

    def conv_bn_act(self, name, filters=None, kernel_size=1, strides=1, *, timm, **kwargs):
        """A `ConvBnAct` with this block's padding and BatchNorm settings.

        `timm`: timm's names of its convolution and BatchNorm in the block.
        """
        return ConvBnAct(
            filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=self.padding,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            norm=self.norm_type,
            name=name,
            timm_names=timm,
            anti_alias=self.anti_alias,
            **kwargs,
        )

    def squeeze_excite(self, channels, ratio):
        """The block's squeeze-excite on `channels`, or None without a ratio."""
        if not ratio:
            return None
        width = channels * ratio
        width = make_divisible(width) if self.se_rounding == "divisible" else int(round(width))
        activation = self.se_activation or self.activation
        return declare(SqueezeExcite(width, activation=activation, name="se"), timm="se")

    def build_sequence(self, input_shape, sublayers, main=True):
        """Build `sublayers` (None entries skipped) one after the other.

        Keras needs every child's state created in the parent's `build()` so
        that saved models reload; returns the output shape of the last one.
        With `main=True` they are the block's branch that `call()` runs.
        """
        shape = tuple(input_shape)
        present = tuple(layer for layer in sublayers if layer is not None)
        for layer in present:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        if main:
            # Not tracked: the sub-layers are already attributes of the block.
            object.__setattr__(self, "_sequence", present)
            self._declare_torchvision_positions(present)
        return shape

    def _declare_torchvision_positions(self, sequence):
        """torchvision's names of the branch's sub-layers: their positions in
        the block's `nn.Sequential` (declared as the block's own torchvision
        name, e.g. `features.4.block`), which holds only the sub-layers the
        block has (no expand conv, no squeeze-excite: the indices shift).

        Each conv is a `Conv2dNormActivation` (`<i>.0`, `<i>.1`), except in
        blocks declared `torchvision_bare_linear` (MobileNetV2's), whose
        linear conv is a bare Conv2d and BatchNorm: positions `i` and `i + 1`.
        """
        names = self.reference_names
        if "torchvision" not in names:
            return
        position = 0
        for layer in sequence:
            if (names.get("torchvision_bare_linear") and isinstance(layer, ConvBnAct)
                    and layer.activation is None):
                declare(layer, torchvision="")
                declare(layer.conv, torchvision=str(position))
                declare(layer.bn, torchvision=str(position + 1))
                position += 2
            else:
                declare(layer, torchvision=str(position))
                position += 1

    def call(self, x, training=None):
        shortcut = x
        x = run_units(self._sequence, x, training)
        return self.finish(x, shortcut, training)

    def build_skip(self, input_shape, output_channels, strides):
        """Create the layer scale and drop path once the shapes are known."""
        self.has_skip = self.residual and strides == 1 and input_shape[-1] == output_channels
        out_shape = tuple(input_shape[:-1]) + (output_channels,)
        if self.layer_scale_init is not None:
            self.layer_scale = declare(
                LayerScale(self.layer_scale_init, name="layer_scale"), timm="layer_scale"
            )
            self.layer_scale.build(out_shape)
        if self.has_skip and self.drop_path_rate:
            self.drop_path = StochasticDepth(self.drop_path_rate, name="drop_path")

    def finish(self, x, shortcut, training=None):
        if self.layer_scale is not None:
            x = self.layer_scale(x)
        if self.has_skip:
            if self.drop_path is not None:
                x = self.drop_path(x, training=training)
            x = x + shortcut
        return stored_as_nhwc(x)  # read by the next block and its residual sum

    def get_config(self):
        config = super().get_config()
        config.update(
            activation=self.activation,
            padding=self.padding,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            norm=self.norm_type,
            layer_scale_init=self.layer_scale_init,
            drop_path_rate=self.drop_path_rate,
            residual=self.residual,
            anti_alias=self.anti_alias,
            se_activation=self.se_activation,
            se_rounding=self.se_rounding,
            reference_names=dict(self.reference_names),
        )
        return config
