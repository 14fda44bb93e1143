"""Timing: the median of repeated calls, blocks of calls in alternating
rounds, the first (compiling) call, the run's --time-limit, turns on the GPU
between the workers of a --parallel run, and the machine's peak matmul
throughput, which the report's fractions of peak divide by.
"""

import contextlib
import datetime
import fcntl
import importlib.util
import os
import statistics
import subprocess
import sys
import time

from common import limit_threads


def time_calls(fn, warmup, repeats, budget_s, min_repeats=2, spent_s=0.0, give_up_s=None,
               min_time_s=0.0):
    """Median wall time of `fn` (which must block until its result is ready).

    Runs up to `warmup` untimed calls, then up to `repeats` timed ones. The
    warm-up stops after one call once `budget_s` / 4 seconds have passed
    (counting `spent_s`, already spent on the first, compiling call), and is
    skipped when that first call alone took more than `budget_s`: a call of
    minutes needs no warming. Timing stops once `min_repeats` calls are timed
    and `budget_s` seconds have passed in all. Any call after the first that
    takes longer than `give_up_s` ends the measurement at once (`gave_up`):
    another path already did the same work more than twice as fast. Calls
    go on past `repeats` until the timed calls add up to `min_time_s`, so
    that millisecond calls get a median of hundreds rather than a handful.
    """
    start = time.perf_counter() - spent_s
    times = []

    def call():
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        return give_up_s is not None and elapsed > give_up_s, elapsed

    gave_up = False
    for i in range(warmup if spent_s <= budget_s else 0):
        if i >= 1 and time.perf_counter() - start > budget_s / 4:
            break
        gave_up, elapsed = call()
        if gave_up:
            times.append(elapsed)
            break
    while not gave_up and (len(times) < repeats or sum(times) < min_time_s):
        gave_up, elapsed = call()
        times.append(elapsed)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    stats = {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "times_ms": [round(1e3 * t, 3) for t in times],
        "repeats": len(times),
    }
    if gave_up:
        stats["gave_up"] = True
    return stats


def give_up_after(best):
    """Seconds after which a call of another path is hopeless next to `best` stats."""
    return None if best is None else max(2e-3 * best["median_ms"], 1.0)


def timed_first_call(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


SKIPPED = "not measured: the run's --time-limit was reached"
OVERRUN_S = 90  # how long a call started before the --time-limit may run past it


def out_of_time(args):
    return args.deadline_at is not None and time.time() > args.deadline_at


class Turns:
    """Takes turns on the GPU with the other workers of a --parallel run.

    Every worker holds an exclusive `flock` on one file from the first call of
    a measurement to its last timed call, so no other worker's GPU work runs
    beside its timed calls; imports, building and counting MACs overlap. The
    first call is inside the turn because compiling runs kernels too: XLA and
    Triton time candidate kernels on the GPU (a first GPU run that compiled
    outside the turns measured the same keras.applications call at 9.2 and
    13.9 ms). Re-entrant, so a whole model can be measured in one turn.
    Without a lock file (serial runs) it does nothing.
    """

    def __init__(self, path, on_release=None):
        self.path, self.on_release, self.depth, self.file = path, on_release, 0, None

    @contextlib.contextmanager
    def __call__(self):
        if self.path is None:
            yield
            return
        if self.depth == 0:
            self.file = open(self.path, "a")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                if self.on_release:
                    self.on_release()  # e.g. hand cached GPU memory back first
                fcntl.flock(self.file, fcntl.LOCK_UN)
                self.file.close()


def measure_calls(fn, repeats, args, turns, best=None):
    """Stats of `fn`: the first (compiling) call, then the timed calls, in one of
    this worker's turns (compiling runs kernels on the GPU too: XLA and Triton
    try candidate kernels); nothing once the --time-limit has passed."""
    if out_of_time(args):
        return {"error": SKIPPED}
    with turns():
        first = timed_first_call(fn)
        stats = time_calls(fn, args.warmup - 1, repeats, args.budget,
                           spent_s=first_call_counts(args, first),
                           give_up_s=give_up_after(best), min_time_s=args.min_time)
    return dict(stats, first_call_s=first)


def first_call_counts(args, first_s):
    """Seconds of the first call that count towards --budget. On CPU all of it: a
    call of minutes needs no warming. On GPU none: there the first call is mostly
    compilation (10-50 s) before calls of milliseconds, which still need their
    warm-up and their repeats."""
    return 0.0 if args.device == "gpu" else first_s


def model_turn(args, size, turns):
    """In a --parallel run, models this large are measured in one turn from build
    to last step: their batch-256 training steps need tens of GB each."""
    if args.lock_file is not None and size >= args.exclusive_size:
        return turns()
    return contextlib.nullcontext()


def measure_peak(device, size, repeats, mixed_precision, mp_dtype):
    """Peak matmul FLOP/s: the best of float32 numpy, torch, TensorFlow and JAX (CPU),
    or torch (GPU)."""
    peaks = {}
    flops = 2.0 * size**3
    try:
        import torch
    except ImportError:
        torch = None

    if device == "gpu":
        if torch is None or not torch.cuda.is_available():
            return {}, None, "no GPU visible to torch: peak not measured"
        dtypes = [("float32", torch.float32, False), ("tf32", torch.float32, True)]
        if mixed_precision:
            dtypes.append((mp_dtype, getattr(torch, mp_dtype), False))
        for name, dtype, tf32 in dtypes:
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)

            def run(a=a, b=b):
                a @ b
                torch.cuda.synchronize()

            stats = time_calls(run, 3, repeats, budget_s=30)
            peaks[f"torch {name} {size}x{size} (cuda)"] = flops / (stats["min_ms"] / 1e3)
            torch.backends.cuda.matmul.allow_tf32 = previous
        # Mixed precision runs compare to the low-precision peak, float32 runs
        # to TF32 (TensorFlow and JAX use TF32 by default on such GPUs).
        key = mp_dtype if mixed_precision else "tf32"
        ref = next(k for k in peaks if f" {key} " in k)
        return peaks, ref, None

    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    stats = time_calls(lambda: a @ b, 2, repeats, budget_s=30)
    peaks[f"numpy float32 {size}x{size}"] = flops / (stats["min_ms"] / 1e3)
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        stats = time_calls(lambda: ta @ tb, 2, repeats, budget_s=30)
        peaks[f"torch float32 {size}x{size} ({torch.get_num_threads()} threads)"] = flops / (
            stats["min_ms"] / 1e3
        )
    for framework in ("tensorflow", "jax"):
        if importlib.util.find_spec(framework) is not None:
            gflops = framework_matmul_gflops(framework, size, repeats)
            if gflops is not None:
                peaks[f"{framework} float32 {size}x{size}"] = gflops * 1e9
    ref = max(peaks, key=peaks.get)
    return peaks, ref, None


# Matmul in a child process, so that the driver never imports TensorFlow or
# JAX. oneDNN (TensorFlow) reaches about twice numpy's OpenBLAS on one core
# here (245 vs 130 GFLOP/s), so a numpy-only "peak" gives fractions over 100%.
_MATMUL_CHILD = {
    "tensorflow": "import tensorflow as tf\n"
                  "a = tf.random.normal((n, n)); b = tf.random.normal((n, n))\n"
                  "f = tf.function(tf.linalg.matmul)\n"
                  "run = lambda: f(a, b).numpy()\n",
    "jax": "import jax, jax.numpy as jnp\n"
           "a = jax.random.normal(jax.random.key(0), (n, n))\n"
           "b = jax.random.normal(jax.random.key(1), (n, n))\n"
           "f = jax.jit(jnp.matmul)\n"
           "run = lambda: f(a, b).block_until_ready()\n",
}


def framework_matmul_gflops(framework, size, repeats):
    """Best float32 matmul GFLOP/s of `framework` on the CPU, or None if it fails."""
    code = (f"import time\nn = {size}\n" + _MATMUL_CHILD[framework] +
            "run()\nbest = float('inf')\n"
            f"for _ in range({repeats}):\n"
            "    t = time.perf_counter(); run(); best = min(best, time.perf_counter() - t)\n"
            "print(2 * n**3 / best / 1e9)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=180)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def add_missing_peaks(run, saved):
    """Measure now, on this machine, the CPU matmul peaks an older run lacks
    (it measured numpy and torch only) and make the best the reference. The
    added entries say that they were measured when re-rendering."""
    if saved.threads:
        limit_threads(saved.threads)
    peaks, _, _ = measure_peak("cpu", saved.peak_size or 2048, 10, False, saved.mp_dtype)
    known = {name.split(" (")[0] for name in run["peaks"]}
    day = datetime.date.today().isoformat()
    for name, value in peaks.items():
        if name.split(" (")[0] not in known:
            run["peaks"][f"{name} (measured on re-render, {day})"] = value
    run["peak_ref"] = max(run["peaks"], key=run["peaks"].get)


def block_ms(fn, calls):
    """Mean ms per call of `calls` calls of `fn` in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def alternate(runners, rounds, calls):
    """Per-round ms of each runner, in alternating order, after two warm-up calls each."""
    for run in runners.values():
        run(), run()
    times = {name: [] for name in runners}
    for r in range(rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            times[name].append(block_ms(runners[name], calls))
    return times
