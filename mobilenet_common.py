"""What the four MobileNet factories share: argument checks, styles and the head."""

import numbers
from dataclasses import dataclass

import keras
from keras import ops

# Every MobileNet downsamples by 32; smaller inputs leave nothing to classify
# and are refused, as keras.applications refuses them.
MIN_INPUT_SIZE = 32
POOLINGS = (None, "avg", "max")


@dataclass(frozen=True)
class Style:
    """Numerical conventions of a reference implementation.

    Attributes:
        name: "keras" (keras.applications / TF-slim weights) or "timm".
        padding: "same" (TensorFlow SAME) or "symmetric" (PyTorch).
        bn_epsilon: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (Keras convention).
    """

    name: str
    padding: str
    bn_epsilon: float
    bn_momentum: float

    def block_kwargs(self):
        return dict(padding=self.padding, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum)


STYLE_NAMES = ("keras", "timm")


def get_style(style, keras_momentum):
    """Resolve a style name; keras.applications' BN momentum differs per version."""
    if style == "keras":
        return Style("keras", "same", 1e-3, keras_momentum)
    if style == "timm":
        # PyTorch's BatchNorm momentum 0.1 is Keras' 0.9.
        return Style("timm", "symmetric", 1e-5, 0.9)
    raise ValueError(f"Unknown style {style!r}; expected one of {STYLE_NAMES}.")


def check_variant(variant, variants, model_name):
    key = str(variant) if isinstance(variant, (int, float)) else variant
    if key not in variants:
        raise ValueError(
            f"Unknown {model_name} variant {variant!r}; expected one of {sorted(variants)}."
        )
    return variants[key]


def check_width(width_multiplier):
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, numbers.Real):
        raise TypeError(
            f"width_multiplier must be a positive number, got {width_multiplier!r} "
            f"of type {type(width_multiplier).__name__}."
        )
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
    return float(width_multiplier)


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_input_shape(input_shape, weights=None):
    """Validate `(height, width, channels)`; spatial dims may be None."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (height, width, channels), e.g. (224, 224, 3) "
            f"or (None, None, 3); got {input_shape!r}."
        )
    height, width, channels = input_shape
    for dim_name, dim in (("height", height), ("width", width)):
        if dim is None:
            continue
        if not isinstance(dim, numbers.Integral) or dim < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {dim_name} must be None or an integer >= {MIN_INPUT_SIZE} "
                f"(the network downsamples by 32); got {dim!r} in {tuple(input_shape)!r}."
            )
    if not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"input_shape channels must be a positive integer, got {channels!r}.")
    if weights is not None and channels != 3:
        raise ValueError(
            f"Pretrained weights expect 3 input channels (RGB); got input_shape "
            f"{tuple(input_shape)!r} with {channels} channels. Use weights=None for "
            "other channel counts."
        )
    return tuple(input_shape)


def check_head_args(include_top, num_classes, pooling, classifier_activation):
    if include_top:
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if classifier_activation is not None:
            try:
                keras.activations.get(classifier_activation)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"Unknown classifier_activation {classifier_activation!r}; use None, "
                    "'softmax', 'sigmoid' or another keras.activations name or callable."
                ) from e
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


def classifier_head(x, num_classes, dropout_rate, classifier_activation, hidden=None):
    """Global average pool -> [hidden layers] -> dropout -> dense -> activation.

    Args:
        x: the feature map.
        num_classes: classifier width.
        dropout_rate: dropout before the classifier.
        classifier_activation: activation of the output (computed in float32
            under mixed precision).
        hidden: optional callable applied to the pooled vector (the 1x1 head
            conv of MobileNetV3/V4, expressed on the pooled vector).
    """
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if hidden is not None:
        x = hidden(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    x = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)


def feature_pooling(x, pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def assemble(input_shape, body, include_top, pooling, name, top=None):
    """Chain `body` (a list of layers) into a functional model and add the top.

    Args:
        input_shape: `(height, width, channels)`.
        body: layers applied in order to the input (stem, blocks, ...).
        include_top: add `top` (a callable on the feature map) or the pooling.
        pooling: pooling of the feature map when `include_top=False`.
        name: model name.
        top: callable building the classifier on the feature map.
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for layer in body:
        x = layer(x)
    x = top(x) if include_top else feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)


def resolve_weights(weights, arch, style, default_style, include_top, num_classes, input_shape):
    """Check `weights=` before building; returns `(source, style)` (see weights.loading)."""
    from weights.loading import resolve_weights as resolve

    if style is not None and style not in STYLE_NAMES:
        raise ValueError(f"Unknown style {style!r}; expected one of {STYLE_NAMES}.")
    return resolve(weights, arch, style, default_style, include_top, num_classes, input_shape[0])


def load_weights(model, source, include_top):
    """Load a source from `resolve_weights` into the built model."""
    from weights.loading import load_weights as load

    return load(model, source, include_top)


def normalize_images(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """Map RGB images in [0, 255] to `(x / 255 - mean) / std` per channel.

    The default mean = std = 0.5 gives [-1, 1], keras.applications' "tf" mode.
    """
    x = ops.cast(x, "float32") / 255.0
    return (x - ops.convert_to_tensor(mean, "float32")) / ops.convert_to_tensor(std, "float32")


def checkpoint_normalization(weights, default):
    """`(mean, std)` of a checkpoint name, or `default` for None / "imagenet"."""
    if weights in (None, "imagenet"):
        return default
    from weights.registry import get_checkpoint

    checkpoint = get_checkpoint(weights)
    return checkpoint.mean, checkpoint.std


def feature_pyramid(model, strides=(4, 8, 16, 32)):
    """A model returning the feature maps of `model` at the given output strides.

    For each stride, the output of the last stem/block layer running at that
    stride is taken (timm's `features_only`, keras-hub's `pyramid_outputs`).
    Works on classifiers and feature extractors, and on `(None, None, 3)`
    inputs; the new model shares the layers (and weights) of `model`.

    Args:
        model: a model from one of the `create_mobilenetv*` factories.
        strides: output strides wanted, each in (2, 4, 8, 16, 32).

    Returns:
        A functional `keras.Model` whose outputs are a dict
        `{"stride_4": ..., "stride_8": ..., ...}`.
    """
    last_at_stride = {}
    stride = 1
    for layer in model.layers:
        if layer.name == "head_conv" and len(layer.output.shape) == 2:
            break  # MobileNetV3/V4 head: after pooling, no spatial map
        if layer.name == "stem" or layer.name.startswith("stage") or layer.name == "head_conv":
            stride *= getattr(layer, "strides", 1)
            last_at_stride[stride] = layer
    unknown = [s for s in strides if s not in last_at_stride]
    if unknown:
        raise ValueError(
            f"Unavailable strides {unknown} for {model.name}; available: {sorted(last_at_stride)}."
        )
    outputs = {f"stride_{s}": last_at_stride[s].output for s in strides}
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def count_macs(model, input_shape=None):
    """Multiply-accumulates of one forward pass (batch 1).

    Counts convolutions, dense layers and the attention matmuls of Mobile
    MQA, the convention of the reference numbers (timm's flop counter / 2);
    BatchNorm, activations and pooling are not counted.

    Args:
        model: the model.
        input_shape: `(height, width, channels)`; defaults to the model's
            input shape, which must then be fully known.
    """
    import numpy as np

    from layers import MobileMQA
    from weights.assign import leaf_layers

    shape = tuple(input_shape or model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"count_macs needs a fully known input shape, got {shape}.")
    counted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    targets = [layer for _, layer in leaf_layers(model) if isinstance(layer, counted)]
    targets += [layer for layer in model._flatten_layers() if isinstance(layer, MobileMQA)]
    total = []

    def macs(layer, x, y):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, _, _ = layer.kernel.shape
            return int(np.prod(y.shape[1:])) * kh * kw
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, _ = layer.kernel.shape
            return int(np.prod(y.shape[1:])) * kh * kw * cin
        if isinstance(layer, keras.layers.Dense):
            return int(np.prod(y.shape[1:])) * int(x.shape[-1])
        # Mobile MQA: q.k and attn.v over every query position and head.
        queries = int(np.prod(x.shape[1:3])) * layer.num_heads
        keys = int(np.prod([-(-d // layer.kv_strides) for d in x.shape[1:3]]))
        return queries * keys * (layer.key_dim + layer.value_dim)

    # Convolutions are recorded in `convolution_op`, which ConvBnAct calls
    # directly when it folds BatchNorm into the kernel.
    patched = [(layer, "convolution_op" if hasattr(layer, "convolution_op") else "call") for layer in targets]
    for layer, method in patched:
        original = getattr(layer, method)

        def recording(x, *args, _layer=layer, _call=original, **kwargs):
            y = _call(x, *args, **kwargs)
            total.append(macs(_layer, x, y))
            return y

        object.__setattr__(layer, method, recording)
    try:
        model(np.zeros((1,) + shape, "float32"), training=False)
    finally:
        for layer, method in patched:
            object.__delattr__(layer, method)
    return sum(total)


def preprocess_input(x, weights="imagenet"):
    """Prepare RGB images in [0, 255] for a MobileNetV1/V2 with `weights`.

    Args:
        x: images, `(..., height, width, 3)`, values in [0, 255].
        weights: "imagenet"/None (keras.applications' [-1, 1]) or a checkpoint
            name, whose own mean/std are used (e.g. timm checkpoints).

    Returns:
        The normalised float32 tensor.
    """
    return normalize_images(x, *checkpoint_normalization(weights, ((0.5,) * 3, (0.5,) * 3)))
