"""What the parts of the benchmark share: the models measured, the source that
builds each, logging and pinning to cores.

Standard library only, so that the driver and ab_keras_apps.py can import it
before any framework: KERAS_BACKEND and the thread-count variables must be set
before Keras, TensorFlow or torch load.
"""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

KERAS_BACKENDS = ("tensorflow", "jax", "torch")
ALL_BACKENDS = KERAS_BACKENDS + ("timm",)

# key -> what to build. `size` is the default resolution (V4: the variant's
# default_size in mobilenet_v4.VARIANTS, checked by the Keras workers).
MODELS = {
    "v1": dict(
        label="MobileNetV1 1.0",
        module="mobilenet_v1",
        factory="create_mobilenetv1",
        kwargs={"variant": "1.0"},
        keras_app="MobileNet",
        timm="mobilenetv1_100",
        size=224,
    ),
    "v2": dict(
        label="MobileNetV2 1.0",
        module="mobilenet_v2",
        factory="create_mobilenetv2",
        kwargs={"variant": "1.0"},
        keras_app="MobileNetV2",
        timm="mobilenetv2_100",
        size=224,
    ),
    "v3_large": dict(
        label="MobileNetV3 large",
        module="mobilenet_v3",
        factory="create_mobilenetv3",
        kwargs={"variant": "large"},
        keras_app="MobileNetV3Large",
        timm="mobilenetv3_large_100",
        size=224,
    ),
    "v3_small": dict(
        label="MobileNetV3 small",
        module="mobilenet_v3",
        factory="create_mobilenetv3",
        kwargs={"variant": "small"},
        keras_app="MobileNetV3Small",
        timm="mobilenetv3_small_100",
        size=224,
    ),
}
for _variant, _size in (
    ("conv_small", 224),
    ("conv_medium", 256),
    ("conv_large", 384),
    ("hybrid_medium", 256),
    ("hybrid_large", 384),
):
    MODELS[f"v4_{_variant}"] = dict(
        label=f"MobileNetV4 {_variant}",
        module="mobilenet_v4",
        factory="create_mobilenetv4",
        kwargs={"variant": _variant},
        keras_app=None,
        timm=f"mobilenetv4_{_variant}",
        size=_size,
        v4_variant=_variant,
    )

MODEL_GROUPS = {
    "all": list(MODELS),
    "v3": ["v3_large", "v3_small"],
    "v4": [k for k in MODELS if k.startswith("v4_")],
}


def status_gb(field="VmRSS:"):
    """A memory line of /proc/self/status in GB (VmRSS: resident now, VmHWM:
    its peak); NaN where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def error_text(exc):
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 400 else text[:400] + "..."


def keras_build_code(spec, impl, input_shape):
    """Python source defining `build()`, which builds `spec` ("ours" or "keras_apps")."""
    if impl == "ours":
        return (f"import {spec['module']} as m; build = lambda: m.{spec['factory']}("
                f"**{spec['kwargs']!r}, input_shape={input_shape!r}, weights=None)")
    return (f"import keras; build = lambda: keras.applications.{spec['keras_app']}("
            f"input_shape={input_shape!r}, weights=None)")


def compiled_model_and_batch(spec, batch, size=None, scope=None):
    """Our model of `spec` at `size` (default: its own), built inside `scope`
    (a context manager, e.g. `keras.RematScope`) if given and compiled with
    SGD, and a random batch of images and labels for it."""
    import contextlib

    import keras
    import numpy as np

    size = size or spec["size"]
    namespace = {}
    exec(keras_build_code(spec, "ours", (size, size, 3)), namespace)
    with scope or contextlib.nullcontext():
        model = namespace["build"]()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, batch)
    return model, x, y


def make_package_importable():
    """Let the workers import `keras_mobilenets` from a bare checkout (a GPU
    machine where nothing can be installed): the repository root is that
    package, so a link named `keras_mobilenets` to it, in a folder put on
    PYTHONPATH, which the workers inherit. Returns that folder, or None when
    the package is importable already."""
    import importlib.util
    import tempfile

    try:
        found = importlib.util.find_spec("keras_mobilenets") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    folder = tempfile.mkdtemp(prefix="keras_mobilenets_path_")
    os.symlink(REPO_ROOT, os.path.join(folder, "keras_mobilenets"))
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (folder, os.environ.get("PYTHONPATH")) if p)
    return folder


def limit_threads(threads):
    """Pin this process (and the workers, which inherit it) to `threads` cores."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[name] = str(threads)
    return cpus


def run_child(code, env, what):
    """Run `code` in a fresh Python process with `env`; the JSON object it
    prints after "RESULT ", or RuntimeError naming `what` with its stderr."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what} failed:\n{out.stderr[-2000:]}")
