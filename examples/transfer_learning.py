"""Transfer learning with a MobileNet feature extractor on a real image dataset.

Builds a MobileNet backbone (`include_top=False`), adds a classification
head, trains it on scikit-learn's handwritten digits (1,797 8x8 grayscale
images, resized to RGB 32x32 by default), reports validation accuracy, saves
the model as `.keras`, reloads it and predicts.

    python examples/transfer_learning.py                       # V3 small, default backend
    python examples/transfer_learning.py --model v4_conv_small --epochs 5 --backend jax
    python examples/transfer_learning.py --weights imagenet --freeze   # pretrained backbone

With `--weights imagenet` the backbone is downloaded; `--freeze` then trains
only the head (BatchNorm stays in inference mode in a frozen backbone).
"""

import argparse
import os
import sys
import time

MODELS = {
    "v1": ("mobilenet_v1", "create_mobilenetv1", dict(variant="0.5")),
    "v2": ("mobilenet_v2", "create_mobilenetv2", dict(variant="0.5")),
    "v3_small": ("mobilenet_v3", "create_mobilenetv3", dict(variant="small", include_preprocessing=False)),
    "v3_large": ("mobilenet_v3", "create_mobilenetv3", dict(variant="large", include_preprocessing=False)),
    "v4_conv_small": ("mobilenet_v4", "create_mobilenetv4", dict(variant="conv_small")),
    "v4_hybrid_medium": ("mobilenet_v4", "create_mobilenetv4", dict(variant="hybrid_medium")),
}


def weights_arg(text):
    """`--weights`: "None"/"none" (or empty) means random initialisation."""
    return None if text.strip().lower() in ("none", "") else text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="v3_small")
    parser.add_argument("--weights", default=None, type=weights_arg,
                        help="backbone weights: None (random init), 'imagenet', a name or a path")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--freeze", action="store_true", help="train the head only")
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                        help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    parser.add_argument("--output", default="digits_mobilenet.keras")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_digits(image_size, seed):
    """Digits as float32 RGB images in [0, 255], split 80/20."""
    import numpy as np
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    images = data.images.astype("float32") * (255.0 / 16.0)  # 0..16 -> 0..255
    # Nearest-neighbour upsampling keeps the strokes sharp and needs no extra package.
    factor = -(-image_size // 8)
    images = images.repeat(factor, axis=1).repeat(factor, axis=2)[:, :image_size, :image_size]
    images = np.repeat(images[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], data.target[order]
    split = int(0.8 * len(images))
    return (images[:split], labels[:split]), (images[split:], labels[split:])


def input_normalization(model, weights):
    """`(mean, std)` on [0, 1] RGB that the backbone's weights expect: the
    checkpoint's own (timm's V4: ImageNet mean/std; keras.applications: 0.5,
    i.e. [-1, 1]), the version's default for "imagenet" or a file, and
    [-1, 1] for a randomly initialised backbone."""
    import importlib

    from keras_mobilenets.features import checkpoint_normalization
    from keras_mobilenets.weights.registry import CHECKPOINTS

    if weights is None:
        return (0.5,) * 3, (0.5,) * 3
    module_name, _, kwargs = MODELS[model]
    arch = importlib.import_module(module_name).VARIANTS[kwargs["variant"]].arch
    name = weights if weights == "imagenet" or weights in CHECKPOINTS else "imagenet"
    return checkpoint_normalization(name, (arch.default_mean, arch.default_std))


def build(args, num_classes):
    import importlib

    import keras

    module_name, factory_name, kwargs = MODELS[args.model]
    module = importlib.import_module(module_name)
    # Training from scratch on a small dataset: timm's BatchNorm momentum (0.9)
    # lets the moving statistics converge within a few hundred steps, where
    # keras.applications' 0.999 would still be near its initial values.
    style = "timm" if args.weights is None else None
    backbone = getattr(module, factory_name)(
        include_top=False,
        style=style,
        pooling="avg",
        weights=args.weights,
        input_shape=(args.image_size, args.image_size, 3),
        **kwargs,
    )
    if args.freeze:
        backbone.trainable = False  # frozen BatchNorm runs in inference mode
    inputs = keras.Input((args.image_size, args.image_size, 3))
    mean, std = input_normalization(args.model, args.weights)
    # [0, 255] -> (x / 255 - mean) / std, as the backbone's weights were trained.
    x = keras.layers.Rescaling([1.0 / (255.0 * s) for s in std],
                               offset=[-m / s for m, s in zip(mean, std)])(inputs)
    x = backbone(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="digits")(x)
    # The factories' model class instead of keras.Model: on TensorFlow the first
    # fit traces the train step once, not twice (README, "Feature extraction and
    # fine-tuning").
    from keras_mobilenets.layers.fast_call import FastFunctional

    return FastFunctional(inputs, outputs, name=f"digits_{args.model}")


def main(argv=None):
    args = parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val) = load_digits(args.image_size, args.seed)
    print(f"Backend {keras.backend.backend()}, {len(x_train)} training / {len(x_val)} "
          f"validation images of {args.image_size}x{args.image_size}")

    model = build(args, num_classes=10)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.time()
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val),
                        epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    val_accuracy = history.history["val_accuracy"][-1]
    print(f"Trained {args.epochs} epochs in {time.time() - start:.0f} s; "
          f"validation accuracy: {val_accuracy:.4f}")

    model.save(args.output)
    reloaded = keras.models.load_model(args.output)
    predictions = np.argmax(reloaded.predict(x_val[:10], verbose=0), axis=-1)
    print(f"Saved {args.output}; reloaded model predicts {predictions.tolist()} "
          f"for labels {y_val[:10].tolist()}")
    return val_accuracy


if __name__ == "__main__":
    main()
