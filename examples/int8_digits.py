"""Post-training int8 quantisation of a MobileNet trained on the example dataset.

Trains the transfer-learning example's model (scikit-learn digits, RGB 32x32)
for a few epochs, converts it to a full-integer LiteRT model calibrated on
training images, and runs both on the validation images:

    python examples/int8_digits.py --model v3_small
    python examples/int8_digits.py --model v4_conv_small --epochs 8

Prints the float and int8 file sizes, both models' validation accuracy and
their top-1 agreement (the share of validation images where the int8 model
predicts the same class as the float Keras model). TensorFlow backend only:
LiteRT conversion goes through a TF SavedModel.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="v3_small", choices=["v3_small", "v3_large", "v4_conv_small", "v1", "v2"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--out", default="exports", help="folder for the .tflite files")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(f"int8 LiteRT conversion needs the tensorflow backend, not {keras.backend.backend()}.")
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    # Same seed, same numbers: seeded weights, dropout and shuffling
    # (set_random_seed), a seeded split, and TF's deterministic kernels
    # (restored afterwards when called from another program).
    was_deterministic = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        return _run(args)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()


def _run(args):
    import keras
    import numpy as np

    from examples import export, transfer_learning

    train_args = transfer_learning.parse_args(
        ["--model", args.model, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    )
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val) = transfer_learning.load_digits(train_args.image_size, args.seed)
    model = transfer_learning.build(train_args, num_classes=10)
    model.compile(
        optimizer=keras.optimizers.Adam(train_args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=train_args.batch_size, verbose=0)

    os.makedirs(args.out, exist_ok=True)
    paths = {}
    for fmt in ("litert", "litert_int8"):
        paths[fmt] = os.path.join(args.out, f"digits_{args.model}{export.EXTENSIONS[fmt]}")
        export.export(model, fmt, paths[fmt], representative=x_train[: args.calibration_images])

    float_pred = np.argmax(export.forward(model, x_val), -1)
    int8_pred = np.argmax(export.run("litert_int8", paths["litert_int8"], x_val), -1)
    result = {
        "model": args.model,
        "validation_images": len(x_val),
        "float_bytes": os.path.getsize(paths["litert"]),
        "int8_bytes": os.path.getsize(paths["litert_int8"]),
        "float_accuracy": float(np.mean(float_pred == y_val)),
        "int8_accuracy": float(np.mean(int8_pred == y_val)),
        "top1_agreement": float(np.mean(int8_pred == float_pred)),
    }
    print(
        f"{args.model} on digits ({result['validation_images']} validation images, "
        f"{args.epochs} epochs): float LiteRT {result['float_bytes'] / 1e6:.2f} MB, "
        f"int8 {result['int8_bytes'] / 1e6:.2f} MB "
        f"({result['float_bytes'] / result['int8_bytes']:.2f}x smaller); accuracy float "
        f"{result['float_accuracy']:.4f}, int8 {result['int8_accuracy']:.4f}; "
        f"top-1 agreement {result['top1_agreement']:.4f}"
    )
    return result


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import torch  # noqa: F401  (torch must be imported before TensorFlow here)
    except ImportError:
        pass
    main()
