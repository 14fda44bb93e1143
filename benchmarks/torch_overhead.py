"""Ours on the torch backend against timm eager, alternating in one process.

Eager inference (`torch.no_grad()`), channels-last input for ours and NCHW
for timm, same process and threads. Each round times a block of calls of
each model, in alternating order; the ratio is the median of the per-round
ratios. `--keras-call` also times ours with `layers.fast_call` switched off
(every layer through Keras' own `__call__`), the state before that change.

    python benchmarks/torch_overhead.py --threads 1 --out benchmarks/torch_overhead.md
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (before Keras, which may import TensorFlow)

# name -> (factory module, factory, variant, timm name). Ours in timm's style
# (V4's default; V3's default is keras.applications', with a built-in
# Rescaling and TensorFlow SAME padding, which timm's model has not).
MODELS = {
    "v1": ("mobilenet_v1", "create_mobilenetv1", "1.0", "mobilenetv1_100"),
    "v2": ("mobilenet_v2", "create_mobilenetv2", "1.0", "mobilenetv2_100"),
    "v3_small": ("mobilenet_v3", "create_mobilenetv3", "small", "mobilenetv3_small_100"),
    "v3_large": ("mobilenet_v3", "create_mobilenetv3", "large", "mobilenetv3_large_100"),
    "v4_conv_small": ("mobilenet_v4", "create_mobilenetv4", "conv_small", "mobilenetv4_conv_small"),
    "v4_conv_medium": ("mobilenet_v4", "create_mobilenetv4", "conv_medium",
                       "mobilenetv4_conv_medium"),
    "v4_hybrid_medium": ("mobilenet_v4", "create_mobilenetv4", "hybrid_medium",
                         "mobilenetv4_hybrid_medium"),
}


def block_ms(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def make_runners(ours, ref, x_ours, keras_call, fast_call):
    x_timm = x_ours.permute(0, 3, 1, 2).contiguous()
    runners = {"timm": lambda: ref(x_timm), "ours": lambda: ours(x_ours, training=False)}
    if keras_call:
        def through_keras():
            fast_call._TORCH = False
            try:
                ours(x_ours, training=False)
            finally:
                fast_call._TORCH = True
        runners["ours, Keras __call__"] = through_keras
    return runners


def train_rows(key, ours, ref, args, fast_call):
    """Per-round ms of one training step, ours (and via Keras' __call__) against timm."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.train_batch, 224, 224, 3)).astype("float32")
    y = rng.integers(0, 1000, args.train_batch)
    ours.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    ref.train()
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.01)
    x_timm = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y_timm = torch.from_numpy(y)

    def timm_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(ref(x_timm), y_timm).backward()
        optimizer.step()

    def keras_step():
        fast_call._TORCH = False
        try:
            ours.train_on_batch(x, y)
        finally:
            fast_call._TORCH = True

    runners = {"timm": timm_step, "ours": lambda: ours.train_on_batch(x, y)}
    if args.keras_call:
        runners["ours, Keras __call__"] = keras_step
    times = {name: [] for name in runners}
    for run in runners.values():
        run(), run()
    for r in range(args.rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            times[name].append(block_ms(runners[name], 1))
    ref.eval()
    rows = []
    for name in runners:
        if name == "timm":
            continue
        ratios = [a / b for a, b in zip(times[name], times["timm"])]
        rows.append((key, f"train {args.train_batch}", name, statistics.median(times[name]),
                     statistics.median(times["timm"]), statistics.median(ratios),
                     min(ratios), max(ratios)))
        print(f"{key} train b{args.train_batch} {name}: {rows[-1][3]:.1f} ms, timm "
              f"{rows[-1][4]:.1f} ms, ratio {rows[-1][5]:.2f} ({rows[-1][6]:.2f}-{rows[-1][7]:.2f})",
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keras-call", action="store_true")
    parser.add_argument("--train-batch", type=int, default=0,
                        help="also time one training step at this batch (SGD, cross-entropy): "
                        "ours through `train_on_batch`, timm forward + backward + step")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import importlib

    import numpy as np
    import timm

    from keras_mobilenets.layers import fast_call

    rows = []
    for key in args.models.split(","):
        module, factory, variant, timm_name = MODELS[key]
        ours = getattr(importlib.import_module(module), factory)(
            variant, input_shape=(224, 224, 3), style="timm")
        ref = timm.create_model(timm_name).eval()
        for batch in (int(b) for b in args.batch.split(",")):
            x = np.random.default_rng(0).uniform(0, 1, (batch, 224, 224, 3)).astype("float32")
            runners = make_runners(ours, ref, torch.from_numpy(x), args.keras_call, fast_call)
            times = {name: [] for name in runners}
            with torch.no_grad():
                for run in runners.values():
                    run(), run()
                calls = max(1, int(0.3 / (block_ms(runners["ours"], 1) / 1e3)))
                for r in range(args.rounds):
                    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                        times[name].append(block_ms(runners[name], calls))
            for name in runners:
                if name == "timm":
                    continue
                ratios = [a / b for a, b in zip(times[name], times["timm"])]
                rows.append((key, batch, name, statistics.median(times[name]),
                             statistics.median(times["timm"]), statistics.median(ratios),
                             min(ratios), max(ratios)))
                print(f"{key} b{batch} {name}: {rows[-1][3]:.2f} ms, timm {rows[-1][4]:.2f} ms, "
                      f"ratio {rows[-1][5]:.2f} ({rows[-1][6]:.2f}-{rows[-1][7]:.2f})", flush=True)
        if args.train_batch:
            rows.extend(train_rows(key, ours, ref, args, fast_call))
    lines = [
        "# torch backend against timm eager (inference)", "",
        f"Command: `python benchmarks/torch_overhead.py {' '.join(argv or sys.argv[1:])}`", "",
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} alternating rounds; "
        "median ms per call, ratio = median of per-round ratios (min-max), < 1: ours faster.", "",
        "| model | batch | ours | ours ms | timm ms | ours / timm |", "|---|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {b} | {n} | {a:.2f} | {t:.2f} | **{r:.2f}** ({lo:.2f}-{hi:.2f}) |"
              for k, b, n, a, t, r, lo, hi in rows]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
