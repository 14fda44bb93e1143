"""The `keras-mobilenets` command: `train` and `predict`.

    keras-mobilenets train [DATA_DIR] [options]     fine-tune on class folders of images
    keras-mobilenets predict MODEL.keras IMAGE...   top-5 classes of images

`keras-mobilenets COMMAND --help` lists each command's options. The Keras
backend is `KERAS_BACKEND` (else ~/.keras/keras.json, else TensorFlow).
"""

import sys

COMMANDS = ("train", "predict")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"keras-mobilenets: unknown command {command!r}; expected one of {COMMANDS}.",
              file=sys.stderr)
        return 2
    if command == "train":
        from keras_mobilenets.train import main as run
    else:
        from keras_mobilenets.predict import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
