#!/usr/bin/env python
"""Speed benchmark of the MobileNet V1-V4 factories against keras.applications and timm.

For every variant this prints parameters, MACs, build time, inference latency
(batch 1 and 32 by default) and one training step, on each Keras backend side
by side, next to keras.applications (same backend) and timm (PyTorch eager and
``torch.compile``). See benchmarks/README.md for how to run it.

Design: KERAS_BACKEND is fixed per process, so the driver (this script without
``--worker``) starts one worker subprocess per backend, one after the other
(never concurrently, so they do not compete for cores), plus one for timm. Each
worker writes its results as JSON (after every model, so a worker that crashes
or times out still leaves what it measured); the driver merges them, prints a
Markdown report and draws latency against MACs.

The driver itself imports neither Keras nor TensorFlow; it imports torch (or
numpy) only to measure the peak matmul throughput of the machine.

This file is the command line only; the driver and the workers run it, with
or without ``--worker``. The rest lives beside it: common.py (the models,
shared helpers), timing.py (timed calls, GPU turns, the peak matmul probe),
workers.py (the Keras and timm workers), driver.py (running the workers, the
--ab comparison, writing the outputs), report.py (the Markdown report) and
plot.py (latency against MACs).
"""

import argparse
import json
import sys
from pathlib import Path

from common import ALL_BACKENDS, HERE, MODEL_GROUPS, MODELS
from driver import driver, write_outputs
from timing import add_missing_peaks
from workers import keras_worker, timm_worker


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", default="all",
                   help=f"comma list of {', '.join(MODELS)} or groups {', '.join(MODEL_GROUPS)}")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help="comma list of tensorflow, jax, torch (Keras backends) and timm")
    p.add_argument("--size", type=int, default=None,
                   help="input resolution for every model (default: 224, V4 its default_size)")
    p.add_argument("--batch", default=None,
                   help="comma list of inference batch sizes (default 1,32; --quick: 1; "
                        "--device gpu: 1,256)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="training step batch size, 0 for none (default 32; --quick: 0; "
                        "--device gpu: the largest inference batch)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed inference calls per measurement (default 10; --quick: 3)")
    p.add_argument("--train-repeats", type=int, default=None,
                   help="timed training steps (default 5; --quick: 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up calls, the first of which is timed apart as the compile "
                        "call (default 3; --quick: 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which a measurement stops once 2 calls are timed "
                        "(default 60; --quick: 10)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep timing past --repeats until the timed calls add up to this "
                        "many seconds (default 3; --quick: 0.5)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 1 only, no training step, 3 repeats")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu hides any GPU from the workers; gpu uses it (a worker whose "
                        "framework sees none reports so and measures nothing)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="Keras mixed_<dtype> policy and torch.autocast for timm")
    p.add_argument("--mp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    p.add_argument("--channels-last", action="store_true", help="timm in channels_last")
    p.add_argument("--keras-torch-compile", action="store_true",
                   help="on the torch backend also try jit_compile=True (torch.compile)")
    p.add_argument("--keras-path", default=None,
                   help="restrict the Keras paths tried, e.g. 'xla' or 'graph' for TensorFlow")
    p.add_argument("--no-keras-apps", action="store_true", help="skip keras.applications")
    p.add_argument("--add-peaks", action="store_true",
                   help="with --render on a CPU run: measure the matmul peaks the run lacks "
                        "(TensorFlow, JAX) now, add them to its JSON, labelled as such, and use "
                        "the best")
    p.add_argument("--peak-size", type=int, default=None,
                   help="matmul size for the peak FLOP/s (default 2048 CPU, 8192 GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="pin every worker to this many cores and set the thread-count "
                        "variables (OMP, MKL, TF) to it, e.g. 1 for single-thread latency")
    p.add_argument("--parallel", action="store_true",
                   help="run the workers at the same time, on cores of their own, taking "
                        "turns for their timed calls (for a GPU, where building and "
                        "compiling, not the timed calls, take most of the time)")
    p.add_argument("--split-workers", type=int, default=1,
                   help="with --parallel, run this many workers per Keras backend, each "
                        "measuring every n-th model (JAX spends most of its time compiling)")
    p.add_argument("--infer-first", action="store_true",
                   help="measure every model's inference before any training step")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole run: no measurement starts after it")
    p.add_argument("--exclusive-size", type=int, default=384,
                   help="with --parallel, models of this input size or more are measured "
                        "in one turn from build to last step (memory)")
    p.add_argument("--ab", action="store_true",
                   help="after the workers, also time ours and keras.applications "
                        "alternating in one process (ab_keras_apps.py) on --ab-backends")
    p.add_argument("--ab-backends", default="tensorflow,torch",
                   help="Keras backends for --ab (JAX's ratios are far from 1 and its "
                        "keras.applications training steps slow)")
    p.add_argument("--no-cold-build", action="store_true",
                   help="do not time the first build in a fresh process")
    p.add_argument("--worker-timeout", type=float, default=None,
                   help="seconds after which a worker is killed (its results so far are kept)")
    p.add_argument("--output", default=None, help="write the Markdown report here too, "
                   "e.g. benchmarks/results_cpu.md")
    p.add_argument("--json", default=None, help="write every raw measurement here as JSON")
    p.add_argument("--plot", default=str(HERE / "latency_vs_macs.png"),
                   help="latency-vs-MACs PNG ('none' for no plot)")
    p.add_argument("--render", metavar="RUN_JSON", default=None,
                   help="measure nothing: print (and with --output write) the report of the "
                        "run saved in RUN_JSON by --json, e.g. after changing the report code")
    # Internal: a worker process.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--lock-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cores", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--timm-impls", default="eager,compiled", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv

    names = []
    for name in args.models.split(","):
        name = name.strip()
        group = MODEL_GROUPS.get(name, [name])
        for key in group:
            if key not in MODELS:
                p.error(f"unknown model {key!r}; choose from {', '.join(MODELS)} or "
                        f"{', '.join(MODEL_GROUPS)}")
            if key not in names:
                names.append(key)
    args.models = ",".join(names)
    for backend in args.backends.split(","):
        if backend not in ALL_BACKENDS:
            p.error(f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}")

    gpu = args.device == "gpu"
    defaults = dict(repeats=10, train_repeats=5, warmup=3, budget=60.0, min_time=3.0)
    if args.quick:
        defaults = dict(repeats=3, train_repeats=2, warmup=1, budget=10.0, min_time=0.5)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch is None:
        args.batch = "1" if args.quick else ("1,256" if gpu else "1,32")
    args.batches = [] if args.batch == "none" else [int(b) for b in str(args.batch).split(",")]
    if args.train_batch is None:
        args.train_batch = 0 if args.quick else (max(args.batches) if gpu else 32)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first call is timed apart as the compile call)")
    if args.worker and not args.backend:
        p.error("--worker needs --backend")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        # Rewrite the report (and plot) of an earlier run from its JSON.
        run = json.loads(Path(args.render).read_text())
        saved = parse_args([])  # defaults for settings older runs did not save
        vars(saved).update({"min_time": 0.0, **run["settings"]})
        saved.output, saved.json = args.output, None
        saved.plot = args.plot if args.output else "none"
        if args.add_peaks and saved.device == "cpu":
            add_missing_peaks(run, saved)
            saved.json = args.render
        write_outputs(run, saved, final=True)
    elif args.worker:
        if args.backend == "timm":
            timm_worker(args)
        else:
            keras_worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
