"""Ours against keras.applications, call by call, on the current Keras backend.

`benchmark.py` times one model after the other, minutes apart. On a virtual
machine whose speed drifts (the same keras.applications call measured 3.2 ms
in one run and 5.6 ms in another), ratios near 1 then say more about the
drift than about the models. This script builds both models in one process
and alternates them: each round times one block of calls of ours and one of
keras.applications' (the order flips every round), and the reported ratio is
the median of the per-round ratios, so slow phases of the machine hit both.

Usage (one backend per process, as Keras requires):

    KERAS_BACKEND=tensorflow python benchmarks/ab_keras_apps.py --threads 1 \\
        --output benchmarks/ab_tensorflow.md

Paths: TensorFlow runs a `tf.function` graph (`jit_compile=False`, the faster
path in `benchmark.py` on CPU), JAX `jax.jit`, torch eager.

`--compare depthwise` times two of our own models instead, one with every
depthwise convolution as a convolution (`ops.depthwise_conv`) and one as
shifted sums (`keras_mobilenets.layers.DepthwiseConv(implementation="shift")`):
the measurement behind `implementation="auto"`. It takes every model, V4 too.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import MODELS, keras_build_code, limit_threads  # noqa: E402

KERAS_V1_V3 = [key for key, spec in MODELS.items() if spec.get("keras_app")]


COMPARISONS = {  # --compare: (label of A, label of B)
    "keras_apps": ("ours", "keras.apps"),
    "depthwise": ("conv", "shift"),
}


def build_pair(spec, input_shape, compare="keras_apps"):
    """Models A and B: ours and keras.applications', built as `benchmark.py` builds
    them, or (compare="depthwise") ours with conv and with shift depthwise convs."""
    impls = ("ours", "keras_apps") if compare == "keras_apps" else ("ours", "ours")
    models = []
    for impl in impls:
        namespace = {}
        exec(keras_build_code(spec, impl, input_shape), namespace)
        models.append(namespace["build"]())
    if compare == "depthwise":
        from keras_mobilenets.layers import DepthwiseConv

        for model, implementation in zip(models, COMPARISONS[compare]):
            for layer in model._flatten_layers():
                if isinstance(layer, DepthwiseConv):
                    layer.implementation = implementation  # read when the model is traced
    return models


def block(fn, min_s):
    """Seconds per call of `fn`, over as many calls as fill `min_s` (at least one)."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return elapsed / calls


def ab(fn_ours, fn_ref, rounds, warmup, min_s):
    for _ in range(warmup):
        fn_ours()
        fn_ref()
    ours, ref = [], []
    for r in range(rounds):
        pair = [(fn_ours, ours), (fn_ref, ref)]
        for fn, out in pair if r % 2 == 0 else pair[::-1]:
            out.append(block(fn, min_s))
    ratios = [a / b for a, b in zip(ours, ref)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "ours_ms": 1e3 * statistics.median(ours),
        "ref_ms": 1e3 * statistics.median(ref),
        "ratio": statistics.median(ratios),
        "ratio_q1": q[0],
        "ratio_q3": q[-1],
        "rounds": rounds,
    }


def predictor(model, x):
    return lambda: model.predict_on_batch(x)


def trainer(model, x, y):
    import numpy as np

    # float() syncs, and raises if the step failed (see workers.py).
    return lambda: float(np.asarray(model.train_on_batch(x, y)))


def measure(spec, args, backend, rng):
    """Rows of (model label, measurement, stats) for one model."""
    import keras
    import numpy as np

    size = args.size or spec["size"]
    shape = (size, size, 3)
    ours, ref = build_pair(spec, shape, args.compare)
    for model in (ours, ref):
        model.jit_compile = backend != "tensorflow"
    rows = []
    for batch in args.batches:
        x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch,) + shape).astype("float32"))
        stats = ab(predictor(ours, x), predictor(ref, x), args.rounds, args.warmup,
                   args.min_block)
        rows.append((spec["label"], f"inference b{batch}", stats))
    if args.train_batch:
        n = args.train_batch
        x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (n,) + shape).astype("float32"))
        y = keras.ops.convert_to_tensor(
            np.eye(1000, dtype="float32")[rng.integers(0, 1000, n)])
        for model in (ours, ref):
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
                          loss="categorical_crossentropy", jit_compile=backend != "tensorflow")
        stats = ab(trainer(ours, x, y), trainer(ref, x, y), args.train_rounds, args.warmup, 0.0)
        rows.append((spec["label"], f"train b{n}", stats))
    for row in rows:
        print(f"{row[0]} {row[1]}: {row[2]['ratio']:.3f}", file=sys.stderr, flush=True)
    return rows


def run(args):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    rows = []
    for key in args.models.split(","):
        rows += [(key,) + row for row in measure(MODELS[key], args, backend, rng)]
    return backend, rows


def report(backend, rows, args):
    a, b = COMPARISONS[args.compare]
    lines = [
        f"# {a} / {b}, alternating calls ({backend}, {device_name()}"
        f"{', mixed_' + args.mp_dtype if args.mixed_precision else ''})\n",
        f"`{shlex.join(['python', 'benchmarks/ab_keras_apps.py'] + args.argv)}`; "
        f"{args.threads or 'all'} thread(s); {args.rounds} rounds per inference measurement "
        f"(each a block of calls of at least {args.min_block:g} s per model), "
        f"{args.train_rounds} rounds of one step for training; order flipped every round.\n",
        f"| model | measurement | {a} (ms) | {b} (ms) | ratio (median of rounds) "
        "| ratio q1–q3 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for _, label, kind, s in rows:
        lines.append(f"| {label} | {kind} | {s['ours_ms']:.1f} | {s['ref_ms']:.1f} | "
                     f"{s['ratio']:.3f} | {s['ratio_q1']:.3f}–{s['ratio_q3']:.3f} |")
    return "\n".join(lines) + "\n"


def device_name():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return keras.distribution.list_devices()[0]
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", choices=list(COMPARISONS), default="keras_apps",
                   help="keras_apps: ours / keras.applications; depthwise: ours with conv / "
                        "with shift-and-add depthwise convolutions")
    p.add_argument("--models", default=",".join(KERAS_V1_V3),
                   help=f"comma list of {', '.join(KERAS_V1_V3)} (--compare depthwise: "
                        f"also the V4 ones of benchmark.py)")
    p.add_argument("--mixed-precision", action="store_true", help="Keras mixed_<dtype> policy")
    p.add_argument("--mp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    p.add_argument("--size", type=int, default=None,
                   help="input resolution (default: the model's, as in benchmark.py)")
    p.add_argument("--batch", default="1,32", help="inference batch sizes")
    p.add_argument("--train-batch", type=int, default=32, help="0 for no training step")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--train-rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-block", type=float, default=0.1,
                   help="seconds of calls per model per inference round")
    p.add_argument("--threads", type=int, default=None, help="pin to this many cores")
    p.add_argument("--output", default=None, help="also write the Markdown table here")
    p.add_argument("--json", default=None, help="also write the rows here as JSON")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.batches = [int(b) for b in args.batch.split(",") if b]
    valid = KERAS_V1_V3 if args.compare == "keras_apps" else list(MODELS)
    unknown = [m for m in args.models.split(",") if m not in valid]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {valid}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        limit_threads(args.threads)  # before the frameworks read the thread variables
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy(f"mixed_{args.mp_dtype}")
    backend, rows = run(args)
    text = report(backend, rows, args)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "backend": backend, "device": device_name(), "compare": args.compare,
            "command": shlex.join(["python", "benchmarks/ab_keras_apps.py"] + args.argv),
            "rows": [dict(stats, model=key, measurement=kind) for key, _, kind, stats in rows],
        }, indent=1))


if __name__ == "__main__":
    main()
