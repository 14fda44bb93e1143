"""JAX training step: the library's XLA:CPU compile options against a baseline.

The library's train function on JAX compiles the step with XLA:CPU's
memory-optimising scheduler and, for a small step, its elemental kernel
emitters (`keras_mobilenets.layers.compile_memory.step_compiler_options`).
This compiles the same step of one model ours and the baseline's way, in
one process: `--against keras`, ours as the train function compiles it
against Keras' own `jax.jit(model.train_step)`; `--against
fusion-emitters`, ours with the elemental emitters whatever the step's
size against ours with XLA:CPU's MLIR fusion emitters (its default). It
prints XLA's memory analysis of each (temporaries: the activations and
gradients a step holds at its peak), how far the resident memory rose
while each compiled (ours first, from a trimmed heap; the second compile
may reuse what the first freed, which favours the baseline) and times the
two alternating, round by round. Peak resident memory per process is
`train_memory.py`'s.

    python benchmarks/jax_train_schedule.py --models v3_small v4_conv_small --rounds 7
    python benchmarks/jax_train_schedule.py --against fusion-emitters --rounds 9
"""

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MODELS, REPO_ROOT, compiled_model_and_batch, status_gb  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))


AGAINST = {
    "keras": "Keras' own `jax.jit(model.train_step)`",
    "fusion-emitters": "ours with XLA:CPU's MLIR fusion emitters",
}


def compile_peak(lowered, options):
    """`lowered` compiled with `options`, and how far the resident memory
    rose while XLA compiled it (GB; NaN where the peak cannot be reset)."""
    from keras_mobilenets.layers import compile_memory

    trim = compile_memory._malloc_trim()
    if trim is not None:
        trim(0)
    start = status_gb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident memory
    except OSError:
        return lowered.compile(options), float("nan")
    compiled = lowered.compile(options)
    return compiled, status_gb("VmHWM:") - start


def measure(key, batch, rounds, against):
    import jax

    from keras_mobilenets.layers import compile_memory

    model, x, y = compiled_model_and_batch(MODELS[key], batch)
    model.train_on_batch(x[:2], y[:2])  # builds the optimizer's state
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    data = (x, y, None)
    # Not donating the state, so that both run on the same arrays turn by turn.
    lowered = jax.jit(model.train_step).lower(state, data)
    if against == "keras":  # ours as the train function compiles it
        options = {"ours": compile_memory.step_compiler_options(lowered), "baseline": None}
    else:  # ours with the elemental emitters whatever the step's size
        ours = compile_memory.cpu_compiler_options()
        options = {"ours": ours, "baseline": {**ours, "xla_cpu_use_fusion_emitters": True}}
    compiled, temp, peak = {}, {}, {}
    # Both compiled before either runs: JAX frees a step's buffers after it returns, which
    # would lower the resident memory while the second compiles.
    for name in ("ours", "baseline"):
        compiled[name], peak[name] = compile_peak(lowered, options[name])
        temp[name] = compiled[name].memory_analysis().temp_size_in_bytes / 1e9
    for fn in compiled.values():
        jax.block_until_ready(fn(state, data))
    times = {name: [] for name in compiled}
    for i in range(rounds):
        for name in (("ours", "baseline") if i % 2 else ("baseline", "ours")):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](state, data))
            times[name].append(time.perf_counter() - t0)
    ratios = [m / d for m, d in zip(times["ours"], times["baseline"])]
    return temp, peak, {k: statistics.median(v) for k, v in times.items()}, ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["v3_small", "v4_conv_small"],
                        choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", choices=list(AGAINST), default="keras")
    args = parser.parse_args(argv)
    import jax

    print(f"`python benchmarks/jax_train_schedule.py {' '.join(sys.argv[1:])}`\n")
    print(f"jax {jax.__version__}, {os.cpu_count()} cores, batch {args.batch}, default "
          f"resolution, {args.rounds} alternating rounds. Baseline: {AGAINST[args.against]}. "
          "Temporaries: XLA's memory analysis; compile: how far the resident memory rose while "
          "XLA compiled the step (ours first); step time: median s; ratio: median of per-round "
          "ours / baseline (min-max), < 1: ours faster.\n")
    print("| model | temporaries, baseline (GB) | ours (GB) | compile, baseline (GB) | ours (GB) "
          "| step, baseline (s) | ours (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in args.models:
        temp, peak, median, ratios = measure(key, args.batch, args.rounds, args.against)
        print(f"| {MODELS[key]['label']} ({MODELS[key]['size']}²) | {temp['baseline']:.3f} | "
              f"{temp['ours']:.3f} | {peak['baseline']:.2f} | {peak['ours']:.2f} | "
              f"{median['baseline']:.3f} | {median['ours']:.3f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
              flush=True)


if __name__ == "__main__":
    main()
