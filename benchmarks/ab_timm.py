"""Ours on one Keras backend against timm, alternating, each in a process of
its own on the same core.

benchmark.py measures each framework in its own worker, minutes apart, and
this machine's speed drifts over minutes; timing the two in one process
instead changed timm's compiled speed (V3 large at batch 32: 185-232 ms
beside ours against 139 ms alone). Here two persistent processes, pinned
to the same core, take turns: in each round one times its calls for
`--seconds` (after one untimed call) while the other waits on its pipe,
then the other (ABBA order).
The report is the ratio ours / timm of each round's medians, its median and
range.

    python benchmarks/ab_timm.py --models v3_large,v3_small --batch 1,32 \\
        --backend tensorflow --timm compiled --rounds 9
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import textwrap

from common import HERE, MODELS, keras_build_code, limit_threads, log, make_package_importable

CHILD = textwrap.dedent(
    """
    import json, statistics, sys, time
    kind, spec, size, batches = {kind!r}, {spec!r}, {size}, {batches!r}
    if kind == "ours":
        import numpy as np
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        {build}
        model = build()
        if keras.backend.backend() == "tensorflow":
            model.jit_compile = False  # the graph path, TensorFlow's fastest on CPU
        inputs = {{b: np.random.default_rng(0).uniform(0, 255, (b, size, size, 3))
                  .astype("float32") for b in batches}}
        def call(b):
            model.predict_on_batch(inputs[b])
    else:
        import torch
        import timm
        torch.set_num_threads(1)
        net = timm.create_model(spec["timm"], pretrained=False).eval()
        if kind == "compiled":
            net = torch.compile(net, dynamic=False)
        inputs = {{b: torch.randn(b, 3, size, size) for b in batches}}
        def call(b):
            with torch.inference_mode():
                net(inputs[b])
    for b in batches:
        for _ in range(3):
            call(b)
    print("READY", flush=True)
    for line in sys.stdin:
        b, seconds = json.loads(line)
        call(b)  # untimed: the first call after the other process's turn
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t0 = time.perf_counter()
            call(b)
            times.append(time.perf_counter() - t0)
        print(json.dumps(1e3 * statistics.median(times)), flush=True)
    """
)


def start(kind, key, size, batches, backend):
    spec = MODELS[key]
    build = keras_build_code(spec, "ours", (size, size, 3)) if kind == "ours" else ""
    code = CHILD.format(kind=kind, spec=spec, size=size, batches=batches, build=build)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.strip() == "READY":
            return proc
    raise RuntimeError(f"the {kind} process for {key} ended before it was ready")


def timed(proc, batch, seconds):
    proc.stdin.write(json.dumps([batch, seconds]) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="v3_large,v3_small",
                        help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--timm", default="compiled", choices=("eager", "compiled"))
    parser.add_argument("--batch", default="1,32", help="comma list of batch sizes")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per turn")
    parser.add_argument("--core", type=int, default=None,
                        help="the core both processes run on (default: this process's first)")
    parser.add_argument("--output", help="also write the report (with every round) here")
    args = parser.parse_args()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    make_package_importable()
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    limit_threads(1)  # the one core and one-thread settings, inherited by both processes
    batches = [int(b) for b in args.batch.split(",")]
    rows, log_lines = [], []
    for key in args.models.split(","):
        if key not in MODELS:
            parser.error(f"unknown model {key!r}; choose from {', '.join(MODELS)}")
        size = MODELS[key]["size"]
        log(f"{key}: starting ours ({args.backend}) and timm {args.timm} on core {core}")
        procs = {"ours": start("ours", key, size, batches, args.backend),
                 "timm": start(args.timm, key, size, batches, args.backend)}
        try:
            for batch in batches:
                ratios, ms = [], {"ours": [], "timm": []}
                for r in range(args.rounds):
                    order = ("ours", "timm") if r % 2 == 0 else ("timm", "ours")
                    got = {kind: timed(procs[kind], batch, args.seconds) for kind in order}
                    for kind in ms:
                        ms[kind].append(got[kind])
                    ratios.append(got["ours"] / got["timm"])
                    log_lines.append(f"{key} batch {batch} round {r}: ours {got['ours']:.2f} ms, "
                                     f"timm {got['timm']:.2f} ms, {ratios[-1]:.3f}")
                    log("  " + log_lines[-1])
                rows.append((MODELS[key]["label"], batch, statistics.median(ms["ours"]),
                             statistics.median(ms["timm"]), statistics.median(ratios),
                             min(ratios), max(ratios)))
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait()
    lines = [f"ours ({args.backend}) / timm {args.timm}: medians of {args.rounds} rounds of "
             f"{args.seconds} s each, alternating, both on core {core}; inputs at the model's "
             "default size", "",
             "| model | batch | ours ms | timm ms | ours / timm (range over rounds) |",
             "|---|---:|---:|---:|---:|"]
    for label, batch, ours, theirs, ratio, low, high in rows:
        lines.append(f"| {label} | {batch} | {ours:.2f} | {theirs:.2f} | "
                     f"{ratio:.3f} ({low:.3f}–{high:.3f}) |")
    print("\n".join(lines))
    if args.output:
        command = " ".join(["python", "benchmarks/ab_timm.py", *sys.argv[1:]])
        with open(args.output, "w") as f:
            f.write(f"# Ours against timm, alternating\n\n`{command}` ({now})\n\n"
                    + "\n".join(lines) + "\n\nRounds:\n\n```\n" + "\n".join(log_lines)
                    + "\n```\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
