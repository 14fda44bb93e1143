"""Ours on the torch backend against timm, alternating in one process.

Eager inference (`torch.no_grad()`): ours called directly, channels-last
input, against timm's eval-mode module on NCHW input, same process and
threads. Each round times a block of calls of each, in alternating order;
the ratio is the median of the per-round ratios. `--train-batch N` adds one
training step (ours `train_on_batch`, timm forward + cross-entropy + backward
+ SGD step). `--keras-call` also times ours with `layers.fast_call` switched
off (every layer through Keras' own `__call__` and `keras.ops`), the state
before that module. `--compiled` adds Keras' torch.compile route, ours
compiled with `jit_compile=True` (`predict_on_batch`, `train_on_batch`),
and ours eager again, against timm's module through
`torch.compile(dynamic=False)`.

    python benchmarks/torch_overhead.py --threads 1 --out benchmarks/torch_overhead.md
"""

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (before Keras, which may import TensorFlow)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import alternate, block_ms  # noqa: E402

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


def rows_of(key, batch, times, against):
    """One row per runner of ours against `times["timm"]`, printed as it goes."""
    rows = []
    for name in times:
        if name == "timm":
            continue
        ratios = [a / b for a, b in zip(times[name], times["timm"])]
        row = (key, batch, name, against, statistics.median(times[name]),
               statistics.median(times["timm"]), statistics.median(ratios), min(ratios),
               max(ratios))
        rows.append(row)
        print(f"{key} {batch} {name}: {row[4]:.2f} ms, {against} {row[5]:.2f} ms, "
              f"ratio {row[6]:.2f} ({row[7]:.2f}-{row[8]:.2f})", flush=True)
    return rows


def without_fast_call(fn, fast_call):
    def run():
        fast_call._TORCH = False
        try:
            fn()
        finally:
            fast_call._TORCH = True
    return run


def inference_rows(key, make_ours, ours, ref, batch, args, fast_call):
    import numpy as np

    x = np.random.default_rng(0).uniform(0, 1, (batch, 224, 224, 3)).astype("float32")
    x_ours = torch.from_numpy(x)
    x_timm = x_ours.permute(0, 3, 1, 2).contiguous()
    runners = {"timm": lambda: ref(x_timm), "ours": lambda: ours(x_ours, training=False)}
    if args.keras_call:
        runners["ours, Keras __call__"] = without_fast_call(runners["ours"], fast_call)
    with torch.no_grad():
        calls = max(1, int(0.3 / (block_ms(runners["ours"], 1) / 1e3)))
        rows = rows_of(key, batch, alternate(runners, args.rounds, calls), "timm eager")
    if args.compiled:
        # Fresh compile caches: torch.compile recompiles a function already
        # compiled for other shapes (the last model's) with symbolic shapes.
        torch._dynamo.reset()
        ours_c = make_ours()
        ours_c.compile(jit_compile=True)
        ref_c = torch.compile(ref, dynamic=False)
        runners = {"timm": lambda: ref_c(x_timm),
                   "ours, jit_compile=True": lambda: ours_c.predict_on_batch(x_ours),
                   "ours": runners["ours"]}
        with torch.no_grad():
            rows += rows_of(key, batch, alternate(runners, args.rounds, calls), "timm compiled")
    return rows


def train_rows(key, make_ours, ours, ref, args, fast_call):
    """One training step at `args.train_batch`, ours against timm (eager, and compiled)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.train_batch, 224, 224, 3)).astype("float32")
    y = rng.integers(0, 1000, args.train_batch)
    ref.train()
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.01)
    x_timm = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y_timm = torch.from_numpy(y)
    # torch tensors, as `fit`'s data adapter passes them: numpy arrays break
    # torch.compile's graph at Keras' input conversion in every step.
    x_ours, y_ours = torch.from_numpy(x), torch.from_numpy(y)

    def timm_step(net):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x_timm), y_timm).backward()
        optimizer.step()

    def compiled(model, jit_compile):
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss="sparse_categorical_crossentropy", jit_compile=jit_compile)
        return lambda: model.train_on_batch(x_ours, y_ours)

    batch = f"train {args.train_batch}"
    runners = {"timm": lambda: timm_step(ref), "ours": compiled(ours, False)}
    if args.keras_call:
        runners["ours, Keras __call__"] = without_fast_call(runners["ours"], fast_call)
    rows = rows_of(key, batch, alternate(runners, args.rounds, 1), "timm eager")
    if args.compiled:
        torch._dynamo.reset()
        ref_c = torch.compile(ref, dynamic=False)
        runners = {"timm": lambda: timm_step(ref_c),
                   "ours, jit_compile=True": compiled(make_ours(), True),
                   "ours": runners["ours"]}
        try:
            rows += rows_of(key, batch, alternate(runners, args.rounds, 1), "timm compiled")
        except Exception as error:  # an Inductor failure: report it, go on with the next model
            message = str(error).strip().splitlines()[0][:120]
            print(f"{key} {batch} compiled: failed: {message}", flush=True)
            rows.append((key, batch, f"ours, jit_compile=True: failed ({message})",
                         "timm compiled") + (float("nan"),) * 5)
    ref.eval()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", default="1,32", help="inference batches; empty: none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keras-call", action="store_true")
    parser.add_argument("--compiled", action="store_true",
                        help="also ours with jit_compile=True against timm through torch.compile")
    parser.add_argument("--train-batch", type=int, default=0,
                        help="also time one training step at this batch (SGD, cross-entropy): "
                        "ours through `train_on_batch`, timm forward + backward + step")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import importlib

    import timm

    from keras_mobilenets.layers import fast_call

    rows = []
    for key in args.models.split(","):
        module, factory, variant, timm_name = MODELS[key]

        def make_ours(module=module, factory=factory, variant=variant):
            return getattr(importlib.import_module(module), factory)(
                variant, input_shape=(224, 224, 3), style="timm")

        ours = make_ours()
        ref = timm.create_model(timm_name).eval()
        for batch in (int(b) for b in args.batch.split(",") if b):
            rows += inference_rows(key, make_ours, ours, ref, batch, args, fast_call)
        if args.train_batch:
            rows += train_rows(key, make_ours, ours, ref, args, fast_call)
    lines = [
        "# torch backend against timm", "",
        f"Command: `python benchmarks/torch_overhead.py {shlex.join(argv or sys.argv[1:])}`", "",
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} alternating rounds, "
        "224x224 input for every model; median ms per call, ratio = median of per-round "
        "ratios (min-max), < 1: ours faster.", "",
        "| model | batch | ours | against | ours ms | timm ms | ours / timm |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {b} | {n} | {a} | {o:.2f} | {t:.2f} | **{r:.2f}** ({lo:.2f}-{hi:.2f}) |"
              for k, b, n, a, o, t, r, lo, hi in rows]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
