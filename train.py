"""Fine-tune a MobileNet on a folder of images in one command.

    keras-mobilenets train [DATA_DIR] [options]
    python -m keras_mobilenets.train [DATA_DIR] [options]

DATA_DIR holds one subfolder of images per class (`DATA_DIR/cat/1.jpg`,
`DATA_DIR/dog/2.png`, ...). Without it, scikit-learn's handwritten digits are
written once as PNG class folders into the cache
(`$KERAS_MOBILENETS_CACHE/datasets/digits`) and trained on, from scratch,
offline. The backend is Keras' (`KERAS_BACKEND=jax keras-mobilenets train`).

Writes into RUN_DIR (`--out`, default `runs/<data>-<model>`): `config.json`,
`classes.json`, `log.csv` (one row per epoch), `best.keras` (the best
validation accuracy so far), then `curves.png`, `confusion.png`, the
`--export` files and, last, `report.md`. A run killed at any point continues
from its last finished epoch when the same command is run again (the state
is in RUN_DIR/backup); a finished run (one with `report.md`) is never
overwritten.

Predict with the result: `keras-mobilenets predict RUN_DIR/best.keras IMAGE...`.
"""

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import time

from keras_mobilenets.train_data import (  # noqa: F401 (re-exported: ImageFolder, split, digits_folder)
    MIN_IMAGE_SIZE,
    ImageFolder,
    TrainError,
    digits_folder,
    load_image,
    make_dataset,
    split,
)
from keras_mobilenets.train_report import (
    export_model,
    plot_confusion,
    plot_curves,
    report_text,
    run_exported,
    write_csv,
    write_text,
)

VERSIONS = ("v1", "v2", "v3", "v4", "v5")
EXPORTS = {"keras_int8": "model.int8.keras", "litert": "model.tflite",
           "litert_int8": "model.int8.tflite", "onnx": "model.onnx"}
# Settings that must match to resume a run.
RESUME_KEYS = ("data", "val_dir", "val_split", "model", "weights", "image_size", "batch_size",
               "epochs", "freeze_epochs", "lr", "seed", "augment", "mixed_precision")



# ------------------------------------------------------------------ arguments


def weights_arg(text):
    return None if text.strip().lower() in ("none", "") else text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="keras-mobilenets train",
        description="Fine-tune a MobileNet on a folder of class subfolders of images.",
        epilog="Without DATA_DIR: scikit-learn's digits, from scratch (--weights none, 32 px).",
    )
    parser.add_argument("data", nargs="?", metavar="DATA_DIR",
                        help="folder with one subfolder of images per class")
    parser.add_argument("--val-dir", help="validation images (same class subfolders); "
                        "default: --val-split of DATA_DIR, per class, with --seed")
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--model", default="v3_small",
                        help="vN_VARIANT: v1_0.25 ... v1_1.0, v2_0.35 ... v2_1.4, v3_small, "
                        "v3_large, v4_conv_small, v4_conv_medium, v4_hybrid_medium, ...")
    parser.add_argument("--weights", type=weights_arg, default="default",
                        help="imagenet | none | a checkpoint name | a weights file "
                        "(default: imagenet with DATA_DIR, none for the digits)")
    parser.add_argument("--image-size", type=int, help="default: 224 (32 for the digits)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="all epochs, frozen ones included")
    parser.add_argument("--freeze-epochs", type=int,
                        help="first epochs train the head only, then everything at --lr / 10 "
                        "(default: 2 with pretrained weights, 0 without)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="float16 compute on a GPU (bfloat16 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", metavar="RUN_DIR", help="default: runs/<data>-<model>")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no random flips, rotations (up to 18 degrees), zooms (10%%) "
                        "and shifts (5%%) of the training images")
    parser.add_argument("--no-jit", dest="jit_compile", action="store_false",
                        help="no XLA / jax.jit compilation of the train step (starts faster, "
                        "runs slower: for tiny runs and debugging)")
    parser.add_argument("--export", nargs="+", default=[], choices=sorted(EXPORTS),
                        help="also write and check these files (keras_int8: `model.quantize(\"int8\")`, any backend; litert*: TensorFlow backend)")
    return parser.parse_args(argv)


def parse_model(name):
    """`"v4_conv_small"` -> `("v4", "conv_small")`, checked against VARIANTS."""
    version, _, variant = name.partition("_")
    if version not in VERSIONS or not variant:
        raise TrainError(
            f"Unknown --model {name!r}: expected vN_VARIANT, e.g. v3_small, v4_conv_small, "
            "v2_1.0, v1_0.5."
        )
    module = importlib.import_module(f"keras_mobilenets.mobilenet_{version}")
    if variant not in module.VARIANTS:
        known = ", ".join(f"{version}_{v}" for v in module.VARIANTS)
        raise TrainError(f"Unknown --model {name!r}; {version} has: {known}.")
    return version, variant


def check_args(args):
    """Fill in defaults and reject bad values; returns the run's settings."""
    digits = args.data is None
    weights = args.weights
    if weights == "default":
        weights = None if digits else "imagenet"
    image_size = args.image_size or (32 if digits else 224)
    if image_size < MIN_IMAGE_SIZE:
        raise TrainError(f"--image-size must be at least {MIN_IMAGE_SIZE} (MobileNets downsample "
                         f"32x), got {image_size}.")
    freeze = args.freeze_epochs
    if freeze is None:
        freeze = 0 if weights is None else min(2, args.epochs - 1)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--freeze-epochs", freeze, 0)):
        if value < low:
            raise TrainError(f"{flag} must be at least {low}, got {value}.")
    if freeze > args.epochs:
        raise TrainError(f"--freeze-epochs ({freeze}) is more than --epochs ({args.epochs}).")
    if freeze and weights is None:
        raise TrainError("--freeze-epochs needs pretrained --weights: a random backbone "
                         "would stay random.")
    if not args.lr > 0:
        raise TrainError(f"--lr must be positive, got {args.lr}.")
    if args.val_dir is None and not 0 < args.val_split < 1:
        raise TrainError(f"--val-split must be between 0 and 1, got {args.val_split}.")
    parse_model(args.model)
    return dict(
        data=None if digits else os.path.abspath(args.data),
        val_dir=args.val_dir and os.path.abspath(args.val_dir),
        val_split=None if args.val_dir else args.val_split,
        model=args.model, weights=weights, image_size=image_size,
        batch_size=args.batch_size, epochs=args.epochs, freeze_epochs=freeze, lr=args.lr,
        seed=args.seed, augment=args.augment, mixed_precision=args.mixed_precision,
    )


def check_exports(formats, backend):
    """Refuse, before training, exports this backend or environment cannot do."""
    for fmt in formats:
        if fmt.startswith("litert") and backend != "tensorflow":
            raise TrainError(f"--export {fmt} needs the TensorFlow backend "
                             f"(KERAS_BACKEND=tensorflow), not {backend}; --export onnx works "
                             "on every backend.")
        needs = {"keras_int8": [], "litert": ["ai_edge_litert"], "litert_int8": ["ai_edge_litert"],
                 "onnx": ["onnxruntime", {"tensorflow": "tf2onnx", "jax": "jax2onnx",
                                          "torch": "onnx"}[backend]]}[fmt]
        for package in needs:
            if importlib.util.find_spec(package) is None:
                raise TrainError(f"--export {fmt} needs the {package!r} package "
                                 "(pip install -e \".[test]\" installs it).")


# ----------------------------------------------------------------------- data


def input_normalization(version, variant, weights):
    """`(mean, std)` on [0, 1] RGB that the backbone's weights expect: the
    checkpoint's own, the version's `preprocess_input` default for "imagenet"
    and files, [-1, 1] for a random backbone."""
    if weights is None:
        return (0.5,) * 3, (0.5,) * 3
    from keras_mobilenets.features import checkpoint_normalization
    from keras_mobilenets.weights.registry import CHECKPOINTS

    arch = importlib.import_module(f"keras_mobilenets.mobilenet_{version}").VARIANTS[variant].arch
    name = weights if weights in CHECKPOINTS else "imagenet"
    return checkpoint_normalization(name, (arch.default_mean, arch.default_std))


def build_model(settings, num_classes):
    """`(model, backbone)`: the model maps [0, 255] RGB images to class
    probabilities; it is what is trained, saved and exported."""
    import keras

    version, variant = parse_model(settings["model"])
    module = importlib.import_module(f"keras_mobilenets.mobilenet_{version}")
    factory = getattr(module, f"create_mobilenet{version}")
    size, weights = settings["image_size"], settings["weights"]
    kwargs = dict(include_top=False, pooling="avg", weights=weights, input_shape=(size, size, 3))
    if version == "v3":
        kwargs["include_preprocessing"] = False  # the Rescaling below does it
    if weights is None:
        # timm's BatchNorm momentum (0.9) settles in a few hundred steps on
        # small data; keras.applications' 0.999 would need thousands.
        kwargs["style"] = "timm"
    try:
        backbone = factory(variant, **kwargs)
    except (ValueError, TypeError) as e:
        raise TrainError(f"Cannot build --model {settings['model']} with --weights {weights}: "
                         f"{e}") from e
    mean, std = input_normalization(version, variant, weights)
    # Layers whose quantize() is a no-op: `model.quantize("int8")` warns of none.
    from keras_mobilenets.layers import quantization

    inputs = quantization.Input((size, size, 3), name="image")
    x = quantization.Rescaling([1.0 / (255.0 * s) for s in std],
                               offset=[-m / s for m, s in zip(mean, std)], name="normalize")(inputs)
    x = backbone(x)
    x = quantization.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="classes")(x)
    model = keras.Model(inputs, outputs, name=f"{settings['model']}_classifier")
    return model, backbone


def mixed_precision_policy():
    import keras

    try:
        devices = keras.distribution.list_devices()
    except Exception:  # not every backend lists devices
        devices = []
    gpu = any(d.lower().startswith(("gpu", "cuda")) for d in devices)
    return "mixed_float16" if gpu else "mixed_bfloat16"


# ------------------------------------------------------------------ callbacks


def read_log(path):
    import csv

    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_callbacks(run_dir, phase, model):
    import keras

    log_path = os.path.join(run_dir, "log.csv")

    class EpochLog(keras.callbacks.CSVLogger):
        """CSVLogger that, when a run resumes, first drops rows of epochs that
        will run again (finished but not backed up when the run was killed),
        so that every epoch has exactly one row."""

        def on_train_begin(self, logs=None):
            self.trimmed = False
            super().on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            if self.trimmed:
                return
            self.trimmed = True
            rows = read_log(log_path)
            if any(int(r["epoch"]) >= epoch for r in rows):
                self.csv_file.close()
                keep = [r for r in rows if int(r["epoch"]) < epoch]
                write_csv(log_path, keep, list(rows[0]))
                self.append_header = not keep
                self.csv_file = open(log_path, "a")

    class SaveBest(keras.callbacks.Callback):
        """Save `model` as best.keras (as ModelCheckpoint does) when the
        validation accuracy improves; written to a temporary file first, so
        a kill never leaves a half-written best.keras."""

        def __init__(self):
            super().__init__()
            self.best = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.best is None:
                earlier = [float(r["val_accuracy"]) for r in read_log(log_path)
                           if int(r["epoch"]) < epoch and r.get("val_accuracy")]
                self.best = max(earlier, default=-1.0)

        def on_epoch_end(self, epoch, logs=None):
            value = float((logs or {}).get("val_accuracy", -1.0))
            if value > self.best:
                self.best = value
                partial = os.path.join(run_dir, ".best.partial.keras")
                model.save(partial)
                os.replace(partial, os.path.join(run_dir, "best.keras"))

    backup = keras.callbacks.BackupAndRestore(
        os.path.join(run_dir, "backup", phase), double_checkpoint=True, delete_checkpoint=False
    )
    # Order matters at an epoch's end: the log row, the best model, then the
    # backup; a kill before the backup reruns that epoch and EpochLog drops
    # its row first.
    return [EpochLog(log_path, append=True), SaveBest(), backup]


def prepare_run_dir(out, default_name, settings):
    """The run folder: new, or an unfinished run with the same settings
    (resumed). Checked before anything is written."""
    explicit = out is not None
    out = os.path.abspath(out or os.path.join("runs", default_name))
    if not explicit:
        base, n = out, 2
        while os.path.exists(os.path.join(out, "report.md")):
            out, n = f"{base}-{n}", n + 1
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise TrainError(f"--out {out} is a file, not a folder.")
        if os.path.exists(os.path.join(out, "report.md")):
            raise TrainError(f"--out {out} holds a finished run (it has report.md); pass another "
                             "--out, or delete that folder to train again.")
        config_path = os.path.join(out, "config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                previous = json.load(f)
            changed = [f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in RESUME_KEYS
                       if previous.get(k) != settings[k]]
            if changed:
                raise TrainError(f"--out {out} is an unfinished run with other settings "
                                 f"({'; '.join(changed)}); run it with its own settings to "
                                 "resume it, or pass another --out.")
            return out, True
        if os.listdir(out):
            raise TrainError(f"--out {out} is not empty and is not a run of this command; pass "
                             "a new or empty folder.")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise TrainError(f"Cannot write to --out {out}: {parent} is not a writable folder.")
    return out, False


def create_run_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise TrainError(f"Cannot write to --out {out}: {e}.") from e


# --------------------------------------------------------------------- export


def train(args):
    start_time = time.time()
    settings = check_args(args)
    import keras

    backend = keras.backend.backend()
    check_exports(args.export, backend)
    digits = settings["data"] is None
    data_dir = digits_folder() if digits else settings["data"]
    size = settings["image_size"]
    print(f"Reading {data_dir} ...", flush=True)
    folder = ImageFolder(data_dir, size)
    if settings["val_dir"]:
        train_set = folder
        val_set = ImageFolder(settings["val_dir"], size, folder.classes, what="--val-dir")
    else:
        train_set, val_set = split(folder, settings["val_split"], settings["seed"])
    if folder.unreadable:
        print(f"Skipped {len(folder.unreadable)} unreadable image(s), e.g. "
              f"{folder.unreadable[0][0]} ({folder.unreadable[0][1]})", file=sys.stderr)
    data_name = "digits" if digits else os.path.basename(data_dir.rstrip(os.sep)) or "data"
    run_dir, resumed = prepare_run_dir(args.out, f"{data_name}-{settings['model']}", settings)
    if resumed:
        with open(os.path.join(run_dir, "classes.json"), encoding="utf-8") as f:
            before = json.load(f)["classes"]
        if before != folder.classes:
            raise TrainError(f"--out {run_dir} is an unfinished run on classes {before}, but "
                             f"{data_dir} now has {folder.classes}; pass another --out.")
    print(f"{'Resuming' if resumed else 'Training'} {settings['model']} on {backend}: "
          f"{len(train_set)} training / {len(val_set)} validation images, "
          f"{len(folder.classes)} classes ({folder.summary()}); run folder {run_dir}", flush=True)
    keras.utils.set_random_seed(settings["seed"])
    if settings["mixed_precision"]:
        keras.mixed_precision.set_global_policy(mixed_precision_policy())
    # Built (and any weights downloaded) before the run folder is made.
    model, backbone = build_model(settings, len(folder.classes))
    if not resumed:
        create_run_dir(run_dir)
        write_text(os.path.join(run_dir, "classes.json"), json.dumps(
            {"classes": folder.classes, "image_size": settings["image_size"]}, indent=1))
        # config.json marks the folder as a run that can be resumed.
        write_text(os.path.join(run_dir, "config.json"), json.dumps(settings, indent=1))
    return _train(args, settings, folder, train_set, val_set, run_dir, resumed, digits,
                  data_dir, data_name, backend, start_time, model, backbone)


def _train(args, settings, folder, train_set, val_set, run_dir, resumed, digits, data_dir,
           data_name, backend, start_time, model, backbone):
    import keras
    import numpy as np

    # Digits are not mirror-symmetric: no flips for them.
    train_data = make_dataset(train_set, settings["batch_size"], True, settings["seed"],
                              augment=settings["augment"], flip=not digits)
    val_data = make_dataset(val_set, settings["batch_size"], False, settings["seed"])
    verbose = 1 if sys.stdout.isatty() else 2
    freeze, epochs, lr = settings["freeze_epochs"], settings["epochs"], settings["lr"]
    phases = []
    if freeze:
        phases.append(("head", 0, freeze, lr, False))
    if epochs > freeze:
        phases.append(("all", freeze, epochs, lr / 10 if freeze else lr, True))
    # Trained through a second Model over the same layers: `model` itself is
    # never compiled, so best.keras holds no optimizer state (a third the size).
    train_model = keras.Model(model.inputs, model.outputs, name="train")
    for phase, first, last, phase_lr, trainable in phases:
        backbone.trainable = trainable  # frozen: BatchNorm in inference mode too
        train_model._initial_epoch = None  # set by a previous phase's BackupAndRestore
        train_model.compile(optimizer=keras.optimizers.Adam(phase_lr),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                            jit_compile="auto" if args.jit_compile else False)
        if phase == "head":
            print(f"Epochs 1-{last}: the head only (backbone frozen), lr {phase_lr:g}")
        elif freeze:
            print(f"Epochs {first + 1}-{last}: everything, lr {phase_lr:g}")
        train_model.fit(train_data, validation_data=val_data, initial_epoch=first, epochs=last,
                        callbacks=make_callbacks(run_dir, phase, model), verbose=verbose)

    # Evaluate the best model as saved, the way `predict` will load it.
    best = keras.saving.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    val_images = val_set.batch_images(np.arange(len(val_set))).astype("float32")
    probabilities = best.predict(val_images, batch_size=settings["batch_size"], verbose=0)
    predicted = np.argmax(probabilities, -1)
    labels = val_set.labels
    classes = folder.classes
    matrix = np.zeros((len(classes), len(classes)), "int64")
    np.add.at(matrix, (labels, predicted), 1)
    rows = read_log(os.path.join(run_dir, "log.csv"))
    plots = importlib.util.find_spec("matplotlib") is not None
    if plots:
        plot_curves(rows, os.path.join(run_dir, "curves.png"))
        plot_confusion(matrix, classes, os.path.join(run_dir, "confusion.png"))
    exports = []
    for fmt in dict.fromkeys(args.export):
        path = os.path.join(run_dir, EXPORTS[fmt])
        print(f"Exporting {path} ...", flush=True)
        train_images = train_set.batch_images(np.arange(min(200, len(train_set))))
        export_model(best, fmt, path, train_images.astype("float32"))
        exported = np.argmax(run_exported(fmt, path, val_images), -1)
        exports.append(dict(format=fmt, file=os.path.basename(path), bytes=os.path.getsize(path),
                            accuracy=float(np.mean(exported == labels)),
                            agreement=float(np.mean(exported == predicted))))
        print(f"  {fmt}: accuracy {exports[-1]['accuracy']:.4f}, agreement with Keras "
              f"{exports[-1]['agreement']:.4f}")
    info = dict(data_name=data_name, backend=backend, seconds=time.time() - start_time,
                resumed=resumed, data=data_dir, data_summary=folder.summary(),
                train_images=len(train_set), skipped=folder.skipped,
                unreadable=[p for p, _ in folder.unreadable], plots=plots)
    write_text(os.path.join(run_dir, "report.md"),
               report_text(settings, info, rows, classes, labels, predicted, exports))
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    accuracy = float(np.mean(predicted == labels))
    print(f"Validation accuracy {accuracy:.4f} (best epoch); {time.time() - start_time:.0f} s. "
          f"Report: {os.path.join(run_dir, 'report.md')}")
    return dict(run_dir=run_dir, accuracy=accuracy, exports=exports, epochs=len(rows))


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except TrainError as e:
        print(f"keras-mobilenets train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
