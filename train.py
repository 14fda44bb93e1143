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
import math
import os
import shutil
import sys
import time

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VERSIONS = ("v1", "v2", "v3", "v4", "v5")
EXPORTS = {"litert": "model.tflite", "litert_int8": "model.int8.tflite", "onnx": "model.onnx"}
MIN_IMAGE_SIZE = 32
# Decoded images are kept in memory up to this size; beyond it they are
# decoded again for every batch.
IN_MEMORY_BYTES = 2 << 30
# Settings that must match to resume a run.
RESUME_KEYS = ("data", "val_dir", "val_split", "model", "weights", "image_size", "batch_size",
               "epochs", "freeze_epochs", "lr", "seed", "augment", "mixed_precision")


class TrainError(Exception):
    """A problem with the command's input, reported without a traceback."""


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
                        help="also write and check these files (litert*: TensorFlow backend)")
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
        needs = {"litert": ["ai_edge_litert"], "litert_int8": ["ai_edge_litert"],
                 "onnx": ["onnxruntime", {"tensorflow": "tf2onnx", "jax": "jax2onnx",
                                          "torch": "onnx"}[backend]]}[fmt]
        for package in needs:
            if importlib.util.find_spec(package) is None:
                raise TrainError(f"--export {fmt} needs the {package!r} package "
                                 "(pip install -e \".[test]\" installs it).")


# ----------------------------------------------------------------------- data


def cache_dir():
    from keras_mobilenets.weights.loading import cache_dir as weights_cache

    return weights_cache()


def digits_folder():
    """scikit-learn's 1,797 handwritten digits as `0/ ... 9/` PNG folders
    (32x32 grayscale), written once into the cache; returns the folder."""
    from PIL import Image

    target = os.path.join(cache_dir(), "datasets", "digits")
    if os.path.exists(os.path.join(target, "COMPLETE")):
        return target
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise TrainError("The built-in digits need scikit-learn (pip install -e \".[examples]\"),"
                         " or pass a DATA_DIR of your own images.") from e
    data = load_digits()
    images = (data.images * (255.0 / 16.0)).round().astype("uint8").repeat(4, 1).repeat(4, 2)
    partial = f"{target}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for label in range(10):
        os.makedirs(os.path.join(partial, str(label)))
    for i, (image, label) in enumerate(zip(images, data.target)):
        Image.fromarray(image).save(os.path.join(partial, str(label), f"{i:04d}.png"))
    open(os.path.join(partial, "COMPLETE"), "w").close()
    try:
        os.replace(partial, target)
    except OSError:  # written by another process meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        if not os.path.exists(os.path.join(target, "COMPLETE")):
            raise
    return target


def load_image(path, size):
    """An image file as `(size, size, 3)` uint8 RGB, resized bilinearly
    (as `keras.utils.image_dataset_from_directory` does)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype="uint8")


class ImageFolder:
    """The images of a folder of class subfolders, decoded and checked.

    Attributes:
        classes: class names (subfolder names, sorted).
        paths, labels: the readable images and their class indices.
        images: `(N, size, size, 3)` uint8, or None when too large to keep.
        skipped: files that are not images (by extension).
        unreadable: `(path, reason)` of image files that failed to decode.
    """

    def __init__(self, root, size, classes=None, what="DATA_DIR"):
        import numpy as np

        if not os.path.exists(root):
            raise TrainError(f"{what} {root} does not exist.")
        if not os.path.isdir(root):
            raise TrainError(f"{what} {root} is not a folder.")
        found = sorted(d for d in os.listdir(root)
                       if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
        if not found:
            loose = [f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS)]
            hint = (f" It has {len(loose)} images directly inside: move them into one "
                    "subfolder per class." if loose else "")
            raise TrainError(f"{what} {root} has no class subfolders: put each class's images "
                             f"in a subfolder named after the class (e.g. {root}/cat/1.jpg)."
                             + hint)
        if classes is not None and found != list(classes):
            raise TrainError(f"{what} {root} has classes {found}, but the training data has "
                             f"{list(classes)}.")
        if classes is None and len(found) < 2:
            raise TrainError(f"{what} {root} has a single class ({found[0]!r}); a classifier "
                             "needs at least 2 class subfolders.")
        self.root, self.size, self.classes = root, size, found
        self.paths, self.labels, self.skipped, self.unreadable = [], [], [], []
        per_class = []
        for label, name in enumerate(found):
            files = []
            for folder, dirs, names in os.walk(os.path.join(root, name), followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
            count = 0
            for path in files:
                if not path.lower().endswith(IMAGE_EXTENSIONS):
                    self.skipped.append(path)
                    continue
                self.paths.append(path)
                self.labels.append(label)
                count += 1
            per_class.append(count)
        keep = size * size * 3 * len(self.paths) <= IN_MEMORY_BYTES
        decoded, good = [], []
        for i, path in enumerate(self.paths):
            try:
                image = load_image(path, size)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ...
                self.unreadable.append((path, f"{type(e).__name__}: {e}"))
                continue
            good.append(i)
            if keep:
                decoded.append(image)
        self.paths = [self.paths[i] for i in good]
        self.labels = np.array([self.labels[i] for i in good], dtype="int32")
        self.images = np.stack(decoded) if keep and decoded else None
        counts = np.bincount(self.labels, minlength=len(found))
        empty = [name for name, n in zip(found, counts) if n == 0]
        if empty:
            raise TrainError(f"{what} {root}: no readable images in class folder(s) "
                             f"{empty} ({len(self.skipped)} non-image and {len(self.unreadable)} "
                             f"unreadable files skipped).")

    def __len__(self):
        return len(self.paths)

    def take(self, indices):
        import numpy as np

        part = object.__new__(ImageFolder)
        part.__dict__.update(self.__dict__)
        part.paths = [self.paths[i] for i in indices]
        part.labels = self.labels[indices]
        part.images = None if self.images is None else self.images[np.asarray(indices, int)]
        return part

    def batch_images(self, indices):
        import numpy as np

        if self.images is not None:
            return self.images[indices]
        return np.stack([load_image(self.paths[i], self.size) for i in indices])

    def summary(self):
        text = f"{len(self)} images in {len(self.classes)} classes"
        if self.skipped or self.unreadable:
            text += (f"; skipped {len(self.skipped)} non-image and {len(self.unreadable)} "
                     "unreadable files")
        return text


def split(folder, fraction, seed):
    """Per-class split: `fraction` of each class (at least one image when the
    class has two or more) to validation, with a seeded permutation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(len(folder.classes)):
        members = np.flatnonzero(folder.labels == label)
        members = members[rng.permutation(len(members))]
        n_val = 0 if len(members) < 2 else min(len(members) - 1,
                                               max(1, round(fraction * len(members))))
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    if not val:
        raise TrainError("Too few images for a validation split: give each class at least 2 "
                         "images, or pass --val-dir.")
    return folder.take(sorted(train)), folder.take(sorted(val))


def augment_image(image, rng, flip=True, degrees=18.0, zoom=0.1, shift=0.05):
    """A random flip, rotation, zoom and shift of a uint8 `(H, W, 3)` image,
    as one bilinear affine warp (PIL); uncovered corners take the border's
    mean colour.

    Done in the input pipeline rather than by Keras' RandomRotation /
    RandomZoom / RandomTranslation layers in the model: those cannot be
    jit-compiled (`supports_jit=False`), which turns off jit for the whole
    train step (JAX: 2 s instead of 20 ms a step at 32 px), and on torch
    they take seconds per batch at 224 px.
    """
    import numpy as np
    from PIL import Image

    height, width = image.shape[:2]
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    scale = rng.uniform(1 - zoom, 1 + zoom)
    dx, dy = rng.uniform(-shift, shift, 2) * (width, height)
    # Output pixel (x, y) samples the input at M @ ((x, y) - centre - shift) + centre.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    cx, cy = width / 2, height / 2
    ox, oy = cx + dx, cy + dy
    matrix = (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(0)
    warped = Image.fromarray(np.ascontiguousarray(image)).transform(
        (width, height), Image.AFFINE, matrix, resample=Image.BILINEAR,
        fillcolor=tuple(int(c) for c in border),
    )
    return np.asarray(warped)


def make_dataset(folder, batch_size, shuffle, seed, augment=False, flip=True):
    import keras
    import numpy as np

    class Batches(keras.utils.PyDataset):
        """Batches of float32 [0, 255] images and int labels, reshuffled (and
        augmented) each epoch."""

        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(folder)) if shuffle else np.arange(len(folder))
            self.epoch = 0

        def __len__(self):
            return math.ceil(len(folder) / batch_size)

        def __getitem__(self, index):
            indices = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            images = folder.batch_images(indices)
            if augment:
                rng = np.random.default_rng([seed, self.epoch, index])
                images = np.stack([augment_image(image, rng, flip) for image in images])
            return images.astype("float32"), folder.labels[indices]

        def on_epoch_end(self):
            self.epoch += 1
            if shuffle:
                self.order = self.rng.permutation(len(folder))

    return Batches()


# ---------------------------------------------------------------------- model


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
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling([1.0 / (255.0 * s) for s in std],
                               offset=[-m / s for m, s in zip(mean, std)], name="normalize")(inputs)
    x = backbone(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
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


def write_csv(path, rows, fields):
    import csv

    partial = path + ".partial"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def write_text(path, text):
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


# ---------------------------------------------------------------------- run dir


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


def export_model(model, fmt, path, representative):
    import keras

    backend = keras.backend.backend()
    if fmt == "litert":
        import tensorflow as tf

        model.export(path, format="litert", verbose=False,
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    elif fmt == "litert_int8":
        import tempfile

        import tensorflow as tf

        with tempfile.TemporaryDirectory() as saved_model:
            model.export(saved_model, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([r[None]] for r in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            data = converter.convert()  # int8 inside; float32 input and output
        with open(path, "wb") as f:
            f.write(data)
    else:
        from keras_mobilenets.weights.assign import leaf_layers

        # On JAX, DepthwiseConv's default shift-and-add form makes jax2onnx
        # slow and the graph large: export the convolution form.
        switched = [layer for _, layer in leaf_layers(model) if backend == "jax"
                    and getattr(layer, "implementation", None) in ("auto", "shift")]
        before = [layer.implementation for layer in switched]
        for layer in switched:
            layer.implementation = "conv"
        try:
            model(representative[:1])  # jax2onnx needs a model that was called
            model.export(path, format="onnx", verbose=False)
        finally:
            for layer, implementation in zip(switched, before):
                layer.implementation = implementation
    return path


def run_exported(fmt, path, images, batch_size=32):
    import numpy as np

    outputs = []
    if fmt.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].astype("float32")
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(out["index"]))
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].astype("float32")
            outputs.append(session.run(None, {name: x})[0])
    return np.concatenate(outputs)


# --------------------------------------------------------------------- report


def plot_curves(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[key]) for r in rows], "o-", label="training")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_confusion(matrix, classes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(12, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        top = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title("validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report_text(settings, info, rows, classes, labels, predicted, exports):
    import numpy as np

    lines = [f"# {settings['model']} on {info['data_name']}", ""]
    lines.append(f"Finished {time.strftime('%Y-%m-%d %H:%M')} on the {info['backend']} backend; "
                 f"{info['seconds']:.0f} s in this process{' (resumed)' if info['resumed'] else ''}.")
    lines.append("")
    lines.append(f"Data: {info['data']} ({info['data_summary']}); {info['train_images']} "
                 f"training and {len(labels)} validation images at {settings['image_size']} px.")
    for what, paths in (("Non-image files skipped", info["skipped"]),
                        ("Unreadable images skipped", info["unreadable"])):
        if paths:
            shown = ", ".join(str(p) for p in paths[:10]) + (" ..." if len(paths) > 10 else "")
            lines.append(f"{what} ({len(paths)}): {shown}")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    accuracy = float(np.mean(predicted == labels))
    lines += ["", "| setting | value |", "|---|---|"]
    for key in ("model", "weights", "image_size", "batch_size", "epochs", "freeze_epochs", "lr",
                "augment", "mixed_precision", "seed"):
        value = settings[key]
        lines.append(f"| {key} | {'none (random initialisation)' if value is None else value} |")
    lines += ["", f"Best epoch: {int(best['epoch']) + 1} of {len(rows)}, validation accuracy "
              f"{accuracy:.4f} (`best.keras`; `log.csv` has every epoch).", "",
              "## Per-class validation accuracy", "",
              "| class | images | correct | accuracy |", "|---|---:|---:|---:|"]
    for k, name in enumerate(classes):
        mask = labels == k
        correct = int(np.sum(predicted[mask] == k))
        lines.append(f"| {name} | {int(mask.sum())} | {correct} | "
                     f"{correct / max(1, int(mask.sum())):.4f} |")
    if info["plots"]:
        lines += ["", "## Curves", "", "![loss and accuracy per epoch](curves.png)", "",
                  "## Confusion matrix", "", "![validation confusion matrix](confusion.png)"]
    else:
        lines += ["", "(No curves.png / confusion.png: matplotlib is not installed.)"]
    if exports:
        lines += ["", "## Exported models", "",
                  "Run in their own runtime on the validation images (float32 [0, 255] RGB in, "
                  "probabilities out, int8 inside for litert_int8):", "",
                  "| format | file | MB | accuracy | top-1 agreement with Keras |",
                  "|---|---|---:|---:|---:|"]
        for e in exports:
            lines.append(f"| {e['format']} | {e['file']} | {e['bytes'] / 1e6:.2f} | "
                         f"{e['accuracy']:.4f} | {e['agreement']:.4f} |")
    lines += ["", "Predict: `keras-mobilenets predict best.keras IMAGE...`", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------- main


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
