"""JAX training step: XLA:CPU's default scheduler against the memory-optimising one.

The library's train function on JAX compiles the step with
`xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`
(`keras_mobilenets.layers.compile_memory`). This compiles the same step of
one model both ways, in one process: Keras' own `jax.jit(model.train_step)`
and the library's, prints XLA's memory analysis of each (temporaries: the
activations and gradients a step holds at its peak) and times them
alternating, round by round. Peak resident memory per process is
`train_memory.py`'s.

    python benchmarks/jax_train_schedule.py --models v3_small v4_conv_small --rounds 7
"""

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MODELS, REPO_ROOT, compiled_model_and_batch  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))


def measure(key, batch, rounds):
    import jax

    from keras_mobilenets.layers import compile_memory

    model, x, y = compiled_model_and_batch(MODELS[key], batch)
    model.train_on_batch(x[:2], y[:2])  # builds the optimizer's state
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    data = (x, y, None)
    # Not donating the state, so that both run on the same arrays turn by turn.
    steps = {
        "default": jax.jit(model.train_step),
        "memory": jax.jit(model.train_step, compiler_options=compile_memory.cpu_compiler_options()),
    }
    compiled, temp = {}, {}
    for name, step in steps.items():
        compiled[name] = step.lower(state, data).compile()
        temp[name] = compiled[name].memory_analysis().temp_size_in_bytes / 1e9
        jax.block_until_ready(compiled[name](state, data))
    times = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, data))
            times[name].append(time.perf_counter() - t0)
    ratios = [m / d for m, d in zip(times["memory"], times["default"])]
    return temp, {k: statistics.median(v) for k, v in times.items()}, ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["v3_small", "v4_conv_small"],
                        choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    import jax

    print(f"`python benchmarks/jax_train_schedule.py {' '.join(sys.argv[1:])}`\n")
    print(f"jax {jax.__version__}, {os.cpu_count()} cores, batch {args.batch}, default "
          f"resolution, {args.rounds} alternating rounds; step time: median s; ratio: median of "
          "per-round memory / default (min-max), < 1: the memory scheduler faster.\n")
    print("| model | temporaries, default (GB) | memory scheduler (GB) | step, default (s) "
          "| memory scheduler (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in args.models:
        temp, median, ratios = measure(key, args.batch, args.rounds)
        print(f"| {MODELS[key]['label']} ({MODELS[key]['size']}²) | {temp['default']:.3f} | "
              f"{temp['memory']:.3f} | {median['default']:.3f} | {median['memory']:.3f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
              flush=True)


if __name__ == "__main__":
    main()
