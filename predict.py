"""Classify images with a model trained by `keras-mobilenets train`.

    keras-mobilenets predict RUN_DIR/best.keras IMAGE [IMAGE ...]
    python -m keras_mobilenets.predict RUN_DIR/best.keras IMAGE [IMAGE ...]

Prints the top classes of each image with their probabilities. Class names
come from `classes.json` beside the model (written by `train`), or
`--classes`; without either, class indices are printed.
"""

import argparse
import json
import os
import sys


class PredictError(Exception):
    """A problem with the command's input, reported without a traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="keras-mobilenets predict", description=__doc__.split("\n")[0])
    parser.add_argument("model", metavar="MODEL.keras")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--classes", help="classes.json (default: the one beside the model)")
    parser.add_argument("--top", type=int, default=5)
    return parser.parse_args(argv)


def class_names(model_path, classes_path, count):
    path = classes_path or os.path.join(os.path.dirname(os.path.abspath(model_path)), "classes.json")
    if not os.path.exists(path):
        if classes_path:
            raise PredictError(f"--classes {classes_path} does not exist.")
        return [str(i) for i in range(count)]
    with open(path, encoding="utf-8") as f:
        names = json.load(f)
    names = names["classes"] if isinstance(names, dict) else names
    if len(names) != count:
        raise PredictError(f"{path} names {len(names)} classes but the model has {count}.")
    return [str(n) for n in names]


def predict(model_path, image_paths, classes_path=None, top=5):
    """`[(image_path, [(class_name, probability), ...])]`, best first."""
    if not os.path.exists(model_path):
        raise PredictError(f"Model file {model_path} does not exist.")
    missing = [p for p in image_paths if not os.path.exists(p)]
    if missing:
        raise PredictError(f"Image file(s) not found: {', '.join(missing)}.")
    import keras
    import numpy as np

    import keras_mobilenets  # noqa: F401  (registers the layers the .keras file uses)
    from keras_mobilenets.train_data import load_image

    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:
        raise PredictError(f"Cannot load {model_path} as a Keras model: {e}") from e
    _, height, width, _ = model.input_shape
    if height is None or height != width:
        raise PredictError(f"{model_path} takes {height}x{width} inputs; expected a square size.")
    images = []
    for path in image_paths:
        try:
            images.append(load_image(path, height))
        except Exception as e:
            raise PredictError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e
    probabilities = model.predict(np.stack(images).astype("float32"), verbose=0)
    names = class_names(model_path, classes_path, probabilities.shape[-1])
    results = []
    for path, p in zip(image_paths, probabilities):
        order = np.argsort(-p)[: max(1, top)]
        results.append((path, [(names[k], float(p[k])) for k in order]))
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        results = predict(args.model, args.images, args.classes, args.top)
    except PredictError as e:
        print(f"keras-mobilenets predict: error: {e}", file=sys.stderr)
        return 2
    for path, top in results:
        print(path)
        for name, probability in top:
            print(f"  {probability:7.4f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
