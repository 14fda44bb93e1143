"""Training step with and without chained units, alternating (TensorFlow, JAX).

`layers.conv_bn_act.run_units` computes, in training on TensorFlow and JAX, a unit's
BatchNorm and activation in one gradient with the next unit's convolution,
recomputing the activated map in the backward pass instead of keeping it
(memory: `train_memory.py`). This prints what that costs in step time: one
model, two `train_on_batch` functions traced with the chaining on and off
(`layers.keep_activations`), the same weights, steps
alternating A/B in one process.

    python benchmarks/ab_chained_units.py --models v4_conv_small v3_small --batch 32
    KERAS_BACKEND=jax python benchmarks/ab_chained_units.py --models v2
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import MODELS, compiled_model_and_batch, make_package_importable  # noqa: E402


def step_functions(key, batch, size):
    """The model and its two traced train functions (chained, plain)."""
    from keras_mobilenets.layers import conv_bn_act

    model, x, y = compiled_model_and_batch(MODELS[key], batch, size)
    functions = {}
    for route in ("chained", "plain"):
        with conv_bn_act.keep_activations(model, enabled=route == "plain"):
            model.make_train_function(force=True)
            model.train_on_batch(x, y)  # traces with the route in force
        functions[route] = model.train_function

    def run(route):
        model.train_function = functions[route]
        start = time.perf_counter()
        model.train_on_batch(x, y)
        return time.perf_counter() - start

    return run, x.shape[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["v4_conv_small"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=0, help="resolution (0: the model's default)")
    parser.add_argument("--pairs", type=int, default=7, help="A/B pairs timed per model")
    args = parser.parse_args(argv)
    make_package_importable()
    backend = os.environ["KERAS_BACKEND"]
    print(f"`KERAS_BACKEND={backend} python benchmarks/ab_chained_units.py "
          f"{' '.join(argv or sys.argv[1:])}`\n")
    print("| model | batch | chained s | plain s | chained / plain, median (range) |")
    print("|---|---:|---:|---:|---:|")
    for key in args.models:
        run, size = step_functions(key, args.batch, args.size)
        for route in ("chained", "plain"):  # one more warm-up step each
            run(route)
        times = {"chained": [], "plain": []}
        for pair in range(args.pairs):
            order = ("chained", "plain") if pair % 2 == 0 else ("plain", "chained")
            for route in order:
                times[route].append(run(route))
        ratios = [a / b for a, b in zip(times["chained"], times["plain"])]
        print(f"| {MODELS[key]['label']} ({size}²) | {args.batch} "
              f"| {statistics.median(times['chained']):.3f} "
              f"| {statistics.median(times['plain']):.3f} "
              f"| {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |",
              flush=True)


if __name__ == "__main__":
    main()
