"""The data side of `keras-mobilenets train`: class folders of images, the
built-in digits, the train/validation split and augmentation."""

import math
import os
import shutil

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MIN_IMAGE_SIZE = 32
# Decoded images are kept in memory up to this size; beyond it they are
# decoded again for every batch.
IN_MEMORY_BYTES = 2 << 30

class TrainError(Exception):
    """A problem with the command's input, reported without a traceback."""


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
