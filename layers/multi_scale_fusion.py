"""Multi-scale fusion adapter, the neck of MobileNetV5 (Gemma 3n's vision encoder)."""

import keras
from keras import ops

from .fast_call import FastCall
from .normalization import check_norm, get_norm
from .universal_inverted_bottleneck import UniversalInvertedBottleneck
from .utils import check_padding, declare

_PACKAGE = "keras_mobilenets"


def _spatial(x):
    """(height, width) of an NHWC tensor: ints where static, else tensors."""
    static = x.shape[1:3]
    if all(isinstance(d, int) for d in static):
        return tuple(static)
    dynamic = ops.shape(x)
    return tuple(s if isinstance(s, int) else dynamic[i + 1] for i, s in enumerate(static))


def _nearest_index(in_size, out_size):
    """PyTorch's `interpolate(mode="nearest")` source rows: floor(i * in / out)
    in float32, clipped to the last row."""
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    index = ops.floor(ops.cast(ops.arange(out_size), "float32") * scale)
    return ops.minimum(ops.cast(index, "int32"), ops.cast(in_size, "int32") - 1)


def _resize_nearest(x, height, width):
    """Nearest-neighbour resize of NHWC `x` to `(height, width)`, as PyTorch's."""
    in_height, in_width = _spatial(x)
    sizes = (in_height, in_width, height, width)
    if all(isinstance(d, int) for d in sizes) and (in_height, in_width) == (height, width):
        return x
    x = ops.take(x, _nearest_index(in_height, height), axis=1)
    return ops.take(x, _nearest_index(in_width, width), axis=2)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiScaleFusionAdapter(FastCall, keras.layers.Layer):
    """Fuse feature maps of several strides into one map (timm's MSFA).

    The inputs (a list, finest first) are resized to the first one's size by
    nearest-neighbour upsampling, concatenated on channels and mixed by a
    1x1 feed-forward `UniversalInvertedBottleneck` (no depthwise convs, no
    skip, no layer scale) to `filters` channels. The result is brought to
    `output_resolution`: kept if it already has it, average-pooled when the
    size is a multiple of it, bilinearly resized otherwise (half-pixel
    centres, no antialiasing, as PyTorch's `align_corners=False`); then
    normalised. The output is `(batch, *output_resolution, filters)` for
    any input size, e.g. 16x16 from MobileNetV5's stride-16 and stride-32
    maps of a 768x768 image (48x48 average-pooled by 3).

    Args:
        filters: output channels (2048 in MobileNetV5).
        output_resolution: output height and width, an int or a pair.
        expansion: expansion of the feed-forward block, relative to the
            concatenated input channels.
        activation: activation of the feed-forward block.
        padding, bn_epsilon, bn_momentum, norm: the block settings (see
            `ConvBnAct`); `norm` is also the final normalisation.
        reference_names: the reference names of this layer (see
            `layers.utils.declare`).
    """

    def __init__(
        self,
        filters,
        output_resolution=16,
        expansion=2.0,
        activation="gelu_tanh",
        padding="same",
        bn_epsilon=1e-6,
        bn_momentum=0.99,
        norm="rms",
        reference_names=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        declare(self, **(reference_names or {}))
        if isinstance(output_resolution, int):
            output_resolution = (output_resolution, output_resolution)
        self.filters = filters
        self.output_resolution = tuple(int(r) for r in output_resolution)
        self.expansion = expansion
        self.activation = activation
        self.padding = check_padding(padding)
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.norm_type = check_norm(norm)
        self.ffn = declare(
            UniversalInvertedBottleneck(
                filters, expansion, 0, 0, activation=activation, padding=padding,
                bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, norm=norm, residual=False,
                name="ffn",
            ),
            timm="ffn",
        )
        self.norm = declare(get_norm(norm, bn_epsilon, bn_momentum, "norm"), timm="norm")

    def build(self, input_shapes):
        first = tuple(input_shapes[0])
        channels = sum(shape[-1] for shape in input_shapes)
        self.ffn.build(first[:-1] + (channels,))
        self.norm.build(self.compute_output_shape(input_shapes))

    def call(self, inputs, training=None):
        inputs = list(inputs)
        height, width = _spatial(inputs[0])
        resized = [inputs[0]] + [_resize_nearest(x, height, width) for x in inputs[1:]]
        x = self.ffn(ops.concatenate(resized, axis=-1), training=training)
        x = self._to_output_resolution(x, height, width)
        return self.norm(x, training=training)

    def _to_output_resolution(self, x, height, width):
        out_h, out_w = self.output_resolution

        def pool():
            # Average pooling with kernel = stride = size // output_resolution.
            shape = (-1, out_h, height // out_h, out_w, width // out_w, x.shape[-1])
            return ops.mean(ops.reshape(x, shape), axis=(2, 4))

        def resize():
            return ops.image.resize(
                x, (out_h, out_w), interpolation="bilinear", antialias=False,
                data_format="channels_last",
            )

        if isinstance(height, int) and isinstance(width, int):
            if (height, width) == (out_h, out_w):
                return x
            return pool() if height % out_h == 0 and width % out_w == 0 else resize()
        # Size known only at run time (TensorFlow graphs of a (None, None, 3) model).
        return ops.cond(
            ops.logical_and(ops.equal(height % out_h, 0), ops.equal(width % out_w, 0)),
            pool,
            resize,
        )

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0],) + self.output_resolution + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            output_resolution=list(self.output_resolution),
            expansion=self.expansion,
            activation=self.activation,
            padding=self.padding,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            norm=self.norm_type,
            reference_names=dict(self.reference_names),
        )
        return config
