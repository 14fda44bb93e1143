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
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import fcntl
import gc
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
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

# Columns of the report, in order: (implementation, backend) -> header.
IMPL_LABELS = {"ours": "ours", "keras_apps": "keras.apps", "timm_eager": "timm eager",
               "timm_compiled": "timm compiled"}

# Inference / training paths a Keras worker tries on each backend. Every path
# is Keras' own `predict_on_batch` / `train_on_batch`; they differ only in the
# model's `jit_compile` (TensorFlow: XLA or a plain tf.function graph; JAX:
# always jax.jit; torch: eager, or torch.compile with --keras-torch-compile).
KERAS_PATHS = {
    "tensorflow": {"xla": True, "graph": False},
    "jax": {"jit": True},
    "torch": {"eager": False, "compile": True},
}


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def log(*args):
    print(*args, file=sys.stderr, flush=True)


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


def pin_cores(spec):
    """Pin this process (and the threads and processes it starts) to cores "a-b"."""
    first, last = (int(c) for c in spec.split("-"))
    os.sched_setaffinity(0, range(first, last + 1))
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(last - first + 1))


class ResultFile:
    """A worker's JSON result, rewritten after every model."""

    def __init__(self, path, header):
        self.path = path
        self.data = dict(header, records=[])
        self.flush()

    def add(self, record):
        self.data["records"].append(record)
        self.flush()

    def flush(self):
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def torch_flop_count(fn):
    """Total FLOPs torch's dispatcher sees (conv/matmul/attention) while `fn` runs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def error_text(exc):
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 400 else text[:400] + "..."


# --------------------------------------------------------------------------
# Keras worker (one backend per process)
# --------------------------------------------------------------------------


def keras_worker(args):
    backend = args.backend
    if args.cores:
        pin_cores(args.cores)
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, str(REPO_ROOT))
    if backend == "torch":
        import torch  # noqa: F401  (torch before anything that may load TensorFlow)
    import importlib

    import keras
    import numpy as np

    assert keras.backend.backend() == backend, keras.backend.backend()
    keras.utils.set_random_seed(0)
    header = {
        "backend": backend,
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "device": args.device,
        "notes": [],
    }
    device_ok, device_name, versions = _keras_device_info(backend, args.device)
    header["versions"].update(versions)
    header["device_name"] = device_name
    results = ResultFile(args.result_file, header)
    if not device_ok:
        results.data["error"] = f"no GPU visible to {backend}: {device_name}"
        results.flush()
        log(results.data["error"])
        return

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{args.mp_dtype}")
    paths = dict(KERAS_PATHS[backend])
    if backend == "tensorflow" and args.device == "cpu":
        # The faster path on CPU first, so the other can give up early (see time_calls).
        paths = {"graph": False, "xla": True}
    if backend == "torch" and not args.keras_torch_compile:
        paths.pop("compile")
    if args.keras_path:
        paths = {p: paths[p] for p in args.keras_path.split(",") if p in paths} or paths
    results.data["paths"] = list(paths)
    results.flush()

    release = None
    if backend == "torch" and args.device == "gpu":
        import torch

        release = torch.cuda.empty_cache
    turns = Turns(args.lock_file, release)

    try:
        from mobilenet_common import count_macs
    except ImportError:
        count_macs = None

    records = {}
    for phases in _phases(args):
        for key in args.models.split(","):
            spec = MODELS[key]
            size = args.size or spec["size"]
            impls = ["ours"] + (["keras_apps"] if spec["keras_app"] and not args.no_keras_apps
                                else [])
            for impl in impls:
                log(f"[{backend}] {key} {impl} @ {size}: {', '.join(phases)}")
                record = records.get((key, impl))
                if record is None:
                    record = {"model": key, "impl": impl, "backend": backend, "size": size}
                    # Added first and rewritten after every measurement, so that a worker
                    # killed halfway (out of memory, timeout) leaves what it measured.
                    records[(key, impl)] = record
                    results.add(record)
                results.data["current"] = [key, impl]
                results.flush()
                if out_of_time(args):  # not even built: on JAX building compiles too
                    record.setdefault("error", SKIPPED)
                    continue
                try:
                    with model_turn(args, size, turns):
                        _bench_keras_model(record, spec, impl, size, paths, count_macs, args,
                                           keras, np, importlib, results.flush, phases, turns)
                except Exception as exc:  # keep going: one broken model must not stop the run
                    record["error"] = error_text(exc)
                    log(traceback.format_exc())
                results.flush()
                keras.backend.clear_session()
                gc.collect()
                if release:
                    release()


def _phases(args):
    """What each pass over the models measures: everything in one pass, or with
    --infer-first inference of every model before any training step (so that a
    --time-limit cuts training steps, not whole models)."""
    phases = (["infer"] if args.batches else []) + (["train"] if args.train_batch else [])
    return [[p] for p in phases] if args.infer_first else [phases]


def _keras_device_info(backend, device):
    """(GPU present if asked for, device name, framework versions)."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        name = ", ".join(g.name for g in gpus) if gpus else "cpu"
        return (bool(gpus) or device == "cpu"), name, {"tensorflow": tf.__version__}
    if backend == "jax":
        import jax

        devices = jax.devices()
        name = f"{devices[0].platform}: {devices[0].device_kind}"
        return (devices[0].platform == "gpu" or device == "cpu"), name, {"jax": jax.__version__}
    import torch

    gpu = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    return (gpu or device == "cpu"), name, {"torch": torch.__version__}


def keras_build_code(spec, impl, input_shape):
    """Python source defining `build()`, which builds `spec` ("ours" or "keras_apps")."""
    if impl == "ours":
        return (f"import {spec['module']} as m; build = lambda: m.{spec['factory']}("
                f"**{spec['kwargs']!r}, input_shape={input_shape!r}, weights=None)")
    return (f"import keras; build = lambda: keras.applications.{spec['keras_app']}("
            f"input_shape={input_shape!r}, weights=None)")


def _bench_keras_model(record, spec, impl, size, paths, count_macs, args, keras, np, importlib,
                       flush, phases, turns):
    input_shape = (size, size, 3)
    if impl == "ours":
        module = importlib.import_module(spec["module"])
        if "v4_variant" in spec:
            default = module.VARIANTS[spec["v4_variant"]]["default_size"]
            if default != spec["size"]:
                record["note"] = f"benchmark table says {spec['size']}, VARIANTS says {default}"
    build_code = keras_build_code(spec, impl, input_shape)
    namespace = {}
    exec(build_code, namespace)
    build = namespace["build"]
    if "build_s" not in record:
        # The first build in a process pays one-off costs (on JAX, compiling the
        # initializers for every new weight shape), which depend on what that
        # process built before, so it is timed in a fresh process of its own;
        # the in-process build here is the steady cost.
        if not args.no_cold_build:
            record["build_cold_s"] = fresh_process_build_s(build_code)
        build()
        gc.collect()
    t0 = time.perf_counter()
    model = build()
    record.setdefault("build_s", time.perf_counter() - t0)
    record["params"] = int(model.count_params())
    cold = record.get("build_cold_s")
    log(f"  built in {record['build_s']:.1f} s (cold: "
        f"{'not timed' if cold is None else f'{cold:.1f} s'})")
    flush()
    if "macs" not in record:
        record["macs"], record["macs_source"] = _keras_macs(model, input_shape, impl, count_macs,
                                                           record, keras)
        flush()

    rng = np.random.default_rng(0)

    def images(batch):
        x = rng.uniform(0.0, 255.0, size=(batch,) + input_shape).astype("float32")
        return keras.ops.convert_to_tensor(x)  # on the accelerator, if any, before timing

    if "infer" in phases:
        record["infer"] = {}
        for batch in args.batches:
            x = images(batch)
            best = None
            for path, jit in paths.items():
                try:
                    model.predict_function = None
                    model.jit_compile = jit
                    def fn(x=x):
                        return model.predict_on_batch(x)  # returns NumPy: synced

                    stats = dict(measure_calls(fn, args.repeats, args, turns, best), path=path)
                except Exception as exc:
                    stats = {"path": path, "error": error_text(exc)}
                    log(traceback.format_exc())
                record.setdefault("infer_all", {}).setdefault(str(batch), []).append(stats)
                if "median_ms" in stats and (best is None or
                                             stats["median_ms"] < best["median_ms"]):
                    best = stats
            record["infer"][str(batch)] = best or {"error": _first_error(
                record["infer_all"][str(batch)])}
            log(f"  batch {batch}: " + _summary(record["infer_all"][str(batch)]))
            flush()
            del x

    if "train" in phases:
        x = images(args.train_batch)
        labels = rng.integers(0, 1000, size=args.train_batch)
        y = keras.ops.convert_to_tensor(np.eye(1000, dtype="float32")[labels])
        best = None
        for path, jit in paths.items():
            try:
                model.compile(
                    optimizer=keras.optimizers.SGD(learning_rate=0.01),
                    loss="categorical_crossentropy",
                    jit_compile=jit,
                )
                def fn():
                    # Keras turns the loss into a float, which syncs, but keeps
                    # the device array when that fails (e.g. JAX running out of
                    # memory asynchronously): float() raises the real error.
                    return float(np.asarray(model.train_on_batch(x, y)))

                stats = dict(measure_calls(fn, args.train_repeats, args, turns, best), path=path)
            except Exception as exc:
                stats = {"path": path, "error": error_text(exc)}
                log(traceback.format_exc())
            record.setdefault("train_all", []).append(stats)
            if "median_ms" in stats and (best is None or stats["median_ms"] < best["median_ms"]):
                best = stats
        record["train"] = dict(best or {"error": _first_error(record["train_all"])},
                               batch=args.train_batch)
        log(f"  train batch {args.train_batch}: " + _summary(record["train_all"]))


def _first_error(all_stats):
    errors = [s["error"] for s in all_stats if "error" in s]
    return errors[0] if len(set(errors)) == 1 else "every path failed"


def fresh_process_build_s(build_code):
    """Seconds `build()` takes in a new Python process, after the imports."""
    code = f"{build_code}\nimport time\nt = time.perf_counter()\nbuild()\nprint(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True,
                         text=True, timeout=900, check=True)
    return float(out.stdout.split()[-1])


def _summary(all_stats):
    parts = []
    for st in all_stats:
        if "median_ms" in st:
            gave_up = ", gave up: over twice the other path" if st.get("gave_up") else ""
            parts.append(f"{st.get('path', '')} {st['median_ms']:.1f} ms "
                         f"(first call {st['first_call_s']:.1f} s, {st['repeats']} timed{gave_up})")
        else:
            parts.append(f"{st.get('path', '')} {st.get('error', 'error')}")
    return "; ".join(parts)


def _keras_macs(model, input_shape, impl, count_macs, record, keras):
    """MACs of one image: count_macs if the package has it, else torch's flop counter."""
    if count_macs is not None:
        try:
            return int(count_macs(model, input_shape)), "count_macs"
        except Exception as exc:
            record["macs_error"] = f"count_macs: {error_text(exc)}"
    if keras.backend.backend() == "torch":
        import numpy as np

        x = np.zeros((1,) + input_shape, "float32")
        try:
            return torch_flop_count(lambda: model(x, training=False)) // 2, "torch flop counter"
        except Exception as exc:
            record["macs_error"] = f"flop counter: {error_text(exc)}"
    return None, None


# --------------------------------------------------------------------------
# timm worker (PyTorch eager and torch.compile)
# --------------------------------------------------------------------------


def timm_worker(args):
    if args.cores:
        pin_cores(args.cores)
    import timm
    import torch

    use_gpu = args.device == "gpu"
    header = {
        "backend": "timm",
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "device": args.device,
        "threads": torch.get_num_threads(),
        "notes": [],
    }
    if use_gpu and not torch.cuda.is_available():
        header["device_name"] = "cpu"
        results = ResultFile(args.result_file, header)
        results.data["error"] = "no GPU visible to torch"
        results.flush()
        log(results.data["error"])
        return
    device = torch.device("cuda" if use_gpu else "cpu")
    torch.manual_seed(0)
    header["device_name"] = (
        torch.cuda.get_device_name(0) if use_gpu else f"cpu ({torch.get_num_threads()} threads)"
    )
    results = ResultFile(args.result_file, header)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast_dtype = getattr(torch, args.mp_dtype) if args.mixed_precision else None
    impls = [f"timm_{name}" for name in args.timm_impls.split(",")]
    release = torch.cuda.empty_cache if use_gpu else None
    turns = Turns(args.lock_file, release)

    def sync():
        if use_gpu:
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def measure(fn, repeats):
        try:
            return measure_calls(fn, repeats, args, turns)
        except Exception as exc:
            log(traceback.format_exc())
            return {"error": error_text(exc)}

    records = {}
    for phases in _phases(args):
        for key in args.models.split(","):
            spec = MODELS[key]
            size = args.size or spec["size"]
            log(f"[timm] {key} ({spec['timm']}) @ {size}: {', '.join(phases)}")
            results.data["current"] = [key, "timm"]
            results.flush()
            if key not in records:
                base = {"model": key, "backend": "timm", "size": size, "timm_name": spec["timm"]}
                records[key] = {impl: dict(base, impl=impl) for impl in impls}
                for rec in records[key].values():
                    results.add(rec)
            if out_of_time(args):
                for rec in records[key].values():
                    rec.setdefault("error", SKIPPED)
                continue
            try:
                with model_turn(args, size, turns):
                    _bench_timm_model(records[key], spec, size, phases, measure, args, timm,
                                      torch, device, memory_format, autocast, sync,
                                      results.flush)
            except Exception as exc:
                for rec in records[key].values():
                    rec["error"] = error_text(exc)
                log(traceback.format_exc())
            results.flush()
            torch._dynamo.reset()
            gc.collect()
            if release:
                release()


def _bench_timm_model(records, spec, size, phases, measure, args, timm, torch, device,
                      memory_format, autocast, sync, flush):
    build_s = []
    for _ in range(2):  # cold, then warm (as the Keras workers)
        t0 = time.perf_counter()
        model = timm.create_model(spec["timm"], pretrained=False, num_classes=1000)
        build_s.append(time.perf_counter() - t0)
    model = model.to(device, memory_format=memory_format).eval()
    if "params" not in next(iter(records.values())):
        params = sum(p.numel() for p in model.parameters())
        x1 = torch.zeros(1, 3, size, size, device=device)
        macs = torch_flop_count(lambda: model(x1)) // 2
        for rec in records.values():
            rec.update(build_cold_s=build_s[0], build_s=build_s[1], params=params, macs=macs,
                       macs_source="torch flop counter", infer={})
        flush()
    # Static shapes: one specialised graph per batch size, as XLA.
    runners = {impl: model if impl == "timm_eager" else torch.compile(model, dynamic=False)
               for impl in records}

    if "infer" in phases:
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, device=device).contiguous(
                memory_format=memory_format)
            for impl, net in runners.items():
                def infer(net=net, x=x):
                    with torch.inference_mode(), autocast():
                        net(x)
                    sync()

                stats = dict(measure(infer, args.repeats), path=impl.split("_")[1])
                records[impl]["infer"][str(batch)] = stats
                log(f"  {impl} batch {batch}: " + _summary([stats]))
                flush()
            del x

    if "train" in phases:
        model.train()
        x = torch.randn(args.train_batch, 3, size, size, device=device).contiguous(
            memory_format=memory_format)
        y = torch.randint(0, 1000, (args.train_batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for impl, net in runners.items():
            def step(net=net):
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn(net(x), y)
                loss.backward()
                optimizer.step()
                sync()

            stats = dict(measure(step, args.train_repeats), path=impl.split("_")[1])
            records[impl]["train"] = dict(stats, batch=args.train_batch)
            log(f"  {impl} train batch {args.train_batch}: " + _summary([stats]))
            flush()


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


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


def worker_jobs(args, tmpdir):
    """The workers to run: {name: (backend, extra worker arguments, models)}.

    One per Keras backend and one for timm; a --parallel run splits timm into
    an eager and a compiled worker (compiling is the slow part) and gives each
    worker cores of its own, sized to what it does, so that one worker's
    compiling does not slow another's timed calls. JAX, which compiles
    everything, and the torch.compile worker get the most.
    """
    models = args.models.split(",")
    jobs = {}
    for backend in args.backends.split(","):
        if backend == "timm" and args.parallel:
            jobs["timm"] = (backend, ["--timm-impls", "eager"], models)
            jobs["timm-compiled"] = (backend, ["--timm-impls", "compiled"], models)
        elif backend in KERAS_BACKENDS and args.parallel and args.split_workers > 1:
            # Several workers of one backend, each measuring every n-th model.
            n = min(args.split_workers, len(models))
            for i in range(n):
                jobs[backend if i == 0 else f"{backend}-{i + 1}"] = (backend, [], models[i::n])
        else:
            jobs[backend] = (backend, [], models)
    if not args.parallel:
        return jobs
    weights = {"jax": 5, "tensorflow": 5, "torch": 2, "timm": 2, "timm-compiled": 7}
    # A split worker ("jax-2") weighs what its backend does.
    weight = {name: weights[name.rsplit("-", 1)[0] if name[-1].isdigit() else name]
              for name in jobs}
    cores = sorted(os.sched_getaffinity(0))
    total = sum(weight.values())
    lock = os.path.join(tmpdir, "gpu-turns.lock")
    start = 0
    for i, (name, (_, extra, _)) in enumerate(jobs.items()):
        extra += ["--lock-file", lock]
        if len(cores) >= 2 * len(jobs):  # else too few cores to split: share them all
            n = (len(cores) - start if i == len(jobs) - 1
                 else max(1, round(len(cores) * weight[name] / total)))
            extra += ["--cores", f"{cores[start]}-{cores[start + n - 1]}"]
            start += n
    return jobs


def run_worker(name, job, args, tmpdir):
    """Run one worker; if it dies (out of memory, say) or times out, record an
    error for the model it was measuring and start a new one for the rest."""
    backend, extra, models = job
    remaining = list(models)
    merged = None
    t0 = time.perf_counter()
    for attempt in range(len(models)):
        result_file = os.path.join(tmpdir, f"{name}-{attempt}.json")
        status = _spawn_worker(name, backend, extra, args, ",".join(remaining), result_file)
        try:
            with open(result_file) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {"backend": backend, "records": []}
        if merged is None:
            merged = dict(data, records=[])
        merged["records"] += data["records"]
        if status is None or data.get("error"):
            if status:
                merged["error"] = "; ".join(filter(None, [data.get("error"), f"worker {status}"]))
            break
        current = data.get("current")
        if not current:
            merged["error"] = f"worker {status} before measuring anything"
            break
        key, impl = current
        log(f"=== worker {name} {status} while measuring {key} {impl}; going on")
        impls = {r["impl"] for r in data["records"] if r["model"] == key} or {impl}
        for impl_name in sorted(impls):
            error = f"worker {status} while measuring it (what it measured before is kept)"
            partial = [r for r in data["records"] if (r["model"], r["impl"]) == (key, impl_name)]
            if partial:
                partial[0]["error"] = error
            else:
                merged["records"].append({"model": key, "impl": impl_name, "backend": backend,
                                          "error": error})
        if args.infer_first:
            # The dead worker may have been in either pass: measure again every model
            # still missing its training step (its inference is measured again too).
            trained = {r["model"] for r in merged["records"] if "train" in r}
            remaining = [m for m in remaining if m != key and m not in trained]
        else:
            remaining = remaining[remaining.index(key) + 1:]
        if not remaining or out_of_time(args):
            break
    merged.pop("current", None)
    merged["wall_s"] = time.perf_counter() - t0
    log(f"=== worker {name} done in {merged['wall_s']:.0f} s")
    return merged


def _spawn_worker(name, backend, extra, args, models, result_file):
    """Start a worker and wait for it; returns None or what went wrong."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend,
           "--result-file", result_file, "--models", models] + extra
    for option in ("size", "warmup", "repeats", "train_repeats", "budget", "min_time",
                   "train_batch", "device", "mp_dtype", "keras_path", "threads",
                   "deadline_at", "exclusive_size"):
        value = getattr(args, option)
        if value is not None:
            cmd += [f"--{option.replace('_', '-')}", str(value)]
    cmd += ["--batch", ",".join(str(b) for b in args.batches) or "none"]
    for flag in ("mixed_precision", "keras_torch_compile", "no_keras_apps", "channels_last",
                 "no_cold_build", "infer_first"):
        if getattr(args, flag):
            cmd.append(f"--{flag.replace('_', '-')}")
    env = dict(os.environ)
    if backend in KERAS_BACKENDS:
        env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "cpu":
        # Keep every framework on the CPU even on a machine with a GPU.
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if args.parallel:
            # JAX keeps what it allocated; leave the other workers room for their turns.
            jax_workers = args.split_workers if "jax" in args.backends.split(",") else 1
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.5, 0.8 / jax_workers):.2f}")
    log(f"=== worker {name}: {' '.join(cmd[2:])}")
    timeout = args.worker_timeout
    if args.deadline_at is not None:
        # A call that started before the deadline may run past it; not for ever.
        late = args.deadline_at + OVERRUN_S - time.time()
        timeout = late if timeout is None else min(timeout, late)
    # Its own process group, so that a timeout also ends the compile workers it started.
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO_ROOT), start_new_session=True)
    try:
        returncode = proc.wait(timeout=max(timeout, 1) if timeout is not None else None)
        if returncode == -signal.SIGKILL:
            # Nothing in the worker sends SIGKILL: on Linux it is the kernel's
            # out-of-memory killer (its log says so, e.g. `dmesg | grep oom`).
            return f"exit status {returncode} (SIGKILL, likely the out-of-memory killer)"
        return None if returncode == 0 else f"exit status {returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return (f"timed out after {timeout:.0f} s" if args.deadline_at is None else
                f"stopped {OVERRUN_S} s after the --time-limit")
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def limit_threads(threads):
    """Pin this process (and the workers, which inherit it) to `threads` cores."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[name] = str(threads)
    return cpus


def driver(args):
    started = datetime.datetime.now()
    if args.threads:
        log(f"pinned to cores {limit_threads(args.threads)}")
    t_start = time.perf_counter()
    machine = machine_info()
    log("measuring peak matmul throughput ...")
    peak_size = args.peak_size or (8192 if args.device == "gpu" else 2048)
    peaks, peak_ref, peak_error = measure_peak(args.device, peak_size, 10, args.mixed_precision,
                                               args.mp_dtype)
    for name, value in peaks.items():
        log(f"  {name}: {value / 1e9:.1f} GFLOP/s")

    run = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result_file")},
        "peaks": peaks,
        "peak_ref": peak_ref,
        "peak_error": peak_error,
        "workers": {},
    }
    if args.time_limit:
        args.deadline_at = time.time() + args.time_limit - (time.perf_counter() - t_start)
    with tempfile.TemporaryDirectory(prefix="mobilenet-bench-") as tmp:
        jobs = worker_jobs(args, tmp)
        run["jobs"] = list(jobs)
        if args.parallel:
            # Every worker at once; their timed calls take turns (see Turns).
            with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
                futures = {pool.submit(run_worker, name, job, args, tmp): name
                           for name, job in jobs.items()}
                for future in concurrent.futures.as_completed(futures):
                    run["workers"][futures[future]] = future.result()
                    run["wall_s"] = time.perf_counter() - t_start
                    write_outputs(run, args, final=False)
            run["workers"] = {name: run["workers"][name] for name in jobs}  # report order
        else:
            for name, job in jobs.items():
                run["workers"][name] = run_worker(name, job, args, tmp)
                run["wall_s"] = time.perf_counter() - t_start
                run["load_average_end"] = machine_info().get("load_average")
                # Written after every worker, so an interrupted run keeps what it has.
                write_outputs(run, args, final=False)
        if args.ab:
            run["ab"] = {}
            for backend in args.ab_backends.split(","):
                if backend in args.backends.split(","):
                    run["ab"][backend] = run_ab(backend, args, tmp)
                    write_outputs(run, args, final=False)
        run["wall_s"] = time.perf_counter() - t_start
        run["load_average_end"] = machine_info().get("load_average")
    write_outputs(run, args, final=True)


def run_ab(backend, args, tmpdir):
    """`ab_keras_apps.py` on one backend: ours and keras.applications alternating
    in one process, so that the machine's drift hits both (see its docstring)."""
    models = [m for m in args.models.split(",") if MODELS[m]["keras_app"]]
    if not models:
        return {"error": "no model with a keras.applications counterpart"}
    result = os.path.join(tmpdir, f"ab-{backend}.json")
    cmd = [sys.executable, str(HERE / "ab_keras_apps.py"), "--models", ",".join(models),
           "--batch", ",".join(str(b) for b in args.batches),
           "--train-batch", str(args.train_batch), "--json", result]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.mixed_precision:
        cmd += ["--mixed-precision", "--mp-dtype", args.mp_dtype]
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    log(f"=== A/B {backend}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, cwd=str(REPO_ROOT), check=True,
                       timeout=args.worker_timeout, stdout=subprocess.DEVNULL)
        data = json.loads(Path(result).read_text())
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        data = {"error": error_text(exc)}
    data["wall_s"] = time.perf_counter() - t0
    log(f"=== A/B {backend} done in {data['wall_s']:.0f} s")
    return data


def write_outputs(run, args, final):
    report = render_report(run, args, final)
    if final:
        print(report)
    if args.output:
        Path(args.output).write_text(report)
        log(f"wrote {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
        log(f"wrote {args.json}")
    if final and args.plot and args.plot.lower() != "none":
        try:
            plot(run, args.plot)
            log(f"wrote {args.plot}")
        except ImportError:
            log("matplotlib is not installed (pip install matplotlib): no plot")


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cores_used": len(os.sched_getaffinity(0))}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# ---- report ---------------------------------------------------------------


def collect(run):
    """{(model, impl, backend): record} over every worker."""
    table = {}
    for data in run["workers"].values():
        for rec in data.get("records", []):
            table[(rec["model"], rec["impl"], rec["backend"])] = rec
    return table


def columns(run):
    """The (impl, backend) columns present, ours first, then keras.apps, then timm."""
    cols = []
    keras_backends = [b for b in run["workers"] if b in KERAS_BACKENDS]
    impls = ("ours",) if run["settings"].get("no_keras_apps") else ("ours", "keras_apps")
    for impl in impls:
        cols += [(impl, b) for b in keras_backends]
    if "timm" in run["workers"]:
        cols += [("timm_eager", "timm"), ("timm_compiled", "timm")]
    return cols


def column_label(col):
    impl, backend = col
    return IMPL_LABELS[impl] if backend == "timm" else f"{IMPL_LABELS[impl]} {backend}"


def model_macs(table, key):
    """(MACs, source) of our model: count_macs, else a flop counter on ours, else timm's."""
    for backend in KERAS_BACKENDS:
        rec = table.get((key, "ours", backend), {})
        if rec.get("macs_source") == "count_macs":
            return rec["macs"], "count_macs (ours)"
    rec = table.get((key, "ours", "torch"), {})
    if rec.get("macs"):
        return rec["macs"], "flop counter on ours (torch backend)"
    rec = table.get((key, "timm_eager", "timm"), {})
    if rec.get("macs"):
        return rec["macs"], f"flop counter on timm {rec['timm_name']}"
    return None, None


def record_macs(table, key, impl, backend):
    rec = table.get((key, impl, backend), {})
    if rec.get("macs"):
        return rec["macs"]
    if impl == "keras_apps":
        for b in KERAS_BACKENDS:
            if table.get((key, impl, b), {}).get("macs"):
                return table[(key, impl, b)]["macs"]
    return model_macs(table, key)[0]


def fmt(value, spec=".1f", missing="—"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def metric(rec, kind, batch=None):
    """Median ms of an inference batch or the training step, or None."""
    if not rec:
        return None
    if kind == "build":
        return rec.get("build_s")
    stats = rec.get("infer", {}).get(str(batch)) if kind == "infer" else rec.get("train")
    return (stats or {}).get("median_ms")


def cell(rec, kind, batch=None, show_path=False):
    if rec is None:
        return "—"
    stats = rec.get("infer", {}).get(str(batch)) if kind == "infer" else rec.get("train")
    if not stats or "median_ms" not in stats:
        if not stats and "error" not in rec:
            return "—"
        tried = rec.get("infer_all", {}).get(str(batch)) if kind == "infer" else rec.get(
            "train_all")
        errors = " ".join(str(s.get("error", "")) for s in (tried or []) + [stats or {}, rec])
        if "RESOURCE_EXHAUSTED" in errors or "out of memory" in errors.lower():
            return "out of memory"
        if SKIPPED in errors:
            return "not run (time limit)"
        return "killed" if "SIGKILL" in errors else "error"
    text = fmt(stats["median_ms"])
    if show_path and stats.get("path"):
        text += f" ({stats['path']})"
    return text


def ratio(ours, ref):
    if not ours or not ref:
        return "—"
    r = ours / ref
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def md_table(header, rows, align=None):
    align = align or ["l"] + ["r"] * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(run, args, final=True):
    table = collect(run)
    cols = columns(run)
    models = args.models.split(",")
    workers = run["workers"]
    machine = run["machine"]
    out = []
    device = "GPU" if args.device == "gpu" else "CPU"
    out.append(f"# MobileNet benchmark ({device})\n")
    out.append(f"Run {run['started']}, {run['wall_s'] / 60:.1f} min in all. Command: "
               f"`python benchmarks/benchmark.py {' '.join(args.argv)}`\n")
    if not final:
        todo = [b for b in run.get("jobs", args.backends.split(",")) if b not in run["workers"]]
        out.append(f"**Partial report, written before the workers {', '.join(todo)} ran: "
                   "the run is still going on, or was interrupted.**\n")
    out.append(f"- Machine: {machine.get('cpu', '?')}, {machine['cpu_count']} cores "
               f"({machine['cores_used']} used), "
               f"{machine['platform']}, Python {machine['python']}; load average (1, 5, 15 min) "
               f"at the start {machine.get('load_average', '?')}, at the end "
               f"{run.get('load_average_end', '?')}.")
    load = max((machine.get("load_average") or [0])[:1] + (run.get("load_average_end") or [0])[:1])
    if args.device == "cpu" and load > 0.5 * (machine["cpu_count"] or 1):
        out.append("- **The machine was busy (load average above half its cores): other "
                   "processes competed for the cores and the timings are noisy; rerun on an "
                   "idle machine.**")
    for backend, data in workers.items():
        versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
        line = f"- Worker `{backend}`: {data.get('device_name', '?')}; {versions}; " \
               f"{data.get('wall_s', 0):.0f} s"
        if data.get("paths"):
            line += f"; inference/training paths tried: {', '.join(data['paths'])}"
        if data.get("error"):
            line += f"; **{data['error']}**"
        out.append(line + ".")
    if run["peaks"]:
        peaks = "; ".join(f"{k}: {v / 1e9:,.0f} GFLOP/s" for k, v in run["peaks"].items())
        out.append(f"- Peak matmul (best of {10} runs each): {peaks}. Fractions below use "
                   f"**{run['peak_ref']}**.")
    elif run["peak_error"]:
        out.append(f"- Peak matmul: {run['peak_error']}.")
    precision = f"mixed precision ({args.mp_dtype})" if args.mixed_precision else "float32"
    out.append(
        f"- Batches {args.batches}, training step at batch {args.train_batch or 'none'}; "
        f"{precision}; input {args.size or 'default size per model (224; V4: its default_size)'}"
        f"; median of at least {args.repeats} timed calls ({args.train_repeats} for training)"
        + (f", more until they add up to {args.min_time:g} s," if args.min_time else "")
        + f" after {args.warmup} warm-up calls (the first, which compiles, is reported apart), "
        f"each measurement cut short after {args.budget:.0f} s once 2 calls are timed."
    )
    out.append(
        "- Keras inference: `model.predict_on_batch(x)` on inputs already converted with "
        "`keras.ops.convert_to_tensor` (so on the device); it returns NumPy, which syncs. "
        "It is Keras' own fastest jitted path: on TensorFlow it tries both XLA "
        "(`jit_compile=True`) and a plain `tf.function` graph (`jit_compile=False`) and keeps "
        "the faster (shown in brackets), on JAX it is `jax.jit`, on torch eager (add "
        "`--keras-torch-compile` to also try `torch.compile`). Training: `model.train_on_batch` "
        "after `compile(SGD(0.01), 'categorical_crossentropy', jit_compile=<same paths>)`."
    )
    if any(name.startswith("timm") for name in workers):
        out.append(
            "- timm: `torch.inference_mode()` forward in eval mode, and `torch.compile(model, "
            "dynamic=False)` (one compile per batch shape); training: train-mode forward + "
            "cross-entropy + backward + `SGD.step()`, eager and through the compiled module."
            + (" channels_last." if args.channels_last else "")
        )
    if args.parallel:
        out.append(
            "- `--parallel`: the workers ran at the same time, each on cores of its own, and "
            "took turns for their measurements (an exclusive file lock from the first, "
            "compiling call to the last timed call), so no other worker's GPU work ran beside "
            "timed calls while imports, building and counting MACs overlapped; models of input "
            "size ≥ "
            f"{args.exclusive_size} were measured in one turn from build to last step "
            "(memory). Build times overlap other workers' work.")
    if args.infer_first:
        out.append("- Every model's inference was measured before any training step"
                   + (f"; no measurement started after the {args.time_limit:.0f} s "
                      "`--time-limit` (cells \"not run (time limit)\")" if args.time_limit
                      else "") + ".")
    out.append("")

    # Models: params and MACs.
    out.append("## Models\n")
    rows = []
    sources = set()
    for key in models:
        spec = MODELS[key]
        size = args.size or spec["size"]
        macs, source = model_macs(table, key)
        if source:
            sources.add(source.split(" timm ")[0])

        def params(impl, backends, key=key):
            for b in backends:
                rec = table.get((key, impl, b), {})
                if rec.get("params"):
                    return f"{rec['params'] / 1e6:.3f}"
            return "—"

        kapp_macs = record_macs(table, key, "keras_apps", "torch") if spec["keras_app"] else None
        if kapp_macs == macs and not any(
            table.get((key, "keras_apps", b), {}).get("macs") for b in KERAS_BACKENDS
        ):
            kapp_macs = None
        timm_rec = table.get((key, "timm_eager", "timm"), {})
        rows.append([
            spec["label"], size,
            params("ours", KERAS_BACKENDS), params("keras_apps", KERAS_BACKENDS) if spec[
                "keras_app"] else "n/a",
            params("timm_eager", ("timm",)),
            fmt(macs / 1e6 if macs else None, ".0f"),
            fmt(kapp_macs / 1e6 if kapp_macs else None, ".0f") if spec["keras_app"] else "n/a",
            fmt(timm_rec["macs"] / 1e6 if timm_rec.get("macs") else None, ".0f"),
            source or "—",
        ])
    out.append(md_table(
        ["model", "input", "params ours (M)", "params keras.apps (M)", "params timm (M)",
         "MMACs ours", "MMACs keras.apps", "MMACs timm", "MACs of ours from"],
        rows, ["l", "r", "r", "r", "r", "r", "r", "r", "l"]))
    out.append(
        "\nMACs are multiply-accumulates of one image in convolutions, matmuls and attention "
        "(torch.utils.flop_counter FLOPs / 2, or `mobilenet_common.count_macs` when it exists); "
        "BatchNorm, activations and pooling are not counted.\n"
    )

    def metric_table(title, kind, batch=None, unit="ms", show_path=False):
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for col in cols:
                rec = table.get((key,) + col)
                if kind == "build":
                    if rec and "build_s" in rec:
                        cold = rec.get("build_cold_s")
                        row.append(f"{rec['build_s']:.2f}" + (f" ({cold:.2f})" if cold else ""))
                    else:
                        row.append("error" if rec else "—")
                elif kind == "throughput":
                    t = metric(rec, "infer" if batch else "train", batch)
                    n = batch or args.train_batch
                    row.append(fmt(n / (t / 1e3), ",.0f") if t else cell(rec, "infer" if batch
                                                                          else "train", batch))
                else:
                    row.append(cell(rec, kind, batch, show_path and col[1] == "tensorflow"))
            rows.append(row)
        out.append(f"## {title}\n")
        out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
        out.append("")

    multi_path_tf = len(workers.get("tensorflow", {}).get("paths", [])) > 1
    if args.no_cold_build:
        metric_table("Build time (s): constructing the model with random weights, second "
                     "build in the worker", "build")
    else:
        metric_table("Build time (s): constructing the model with random weights, second build "
                     "(first build in a fresh process, which pays one-off costs, in brackets)",
                     "build")
    if args.device == "gpu":
        for batch in [b for b in args.batches if b > 1]:
            metric_table(f"Inference throughput, batch {batch} (images/s, from the median)",
                         "throughput", batch)
        if args.train_batch:
            metric_table(f"Training throughput, batch {args.train_batch} (images/s, from the "
                         "median step)", "throughput")
    for batch in args.batches:
        metric_table(f"Inference latency, batch {batch} (ms, median)", "infer", batch,
                     show_path=multi_path_tf)
    if args.train_batch:
        metric_table(f"Training step, batch {args.train_batch} (ms, median)", "train",
                     show_path=multi_path_tf)

    # First-call (compile) times.
    first_calls = [(f"First inference call, batch {b}", "infer", b) for b in args.batches[:1]]
    if args.device == "gpu" and args.train_batch:
        first_calls.append((f"First training step, batch {args.train_batch}", "train", None))
    for title, kind, batch in first_calls:
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for col in cols:
                rec = table.get((key,) + col) or {}
                stats = (rec.get("infer", {}).get(str(batch)) if kind == "infer"
                         else rec.get("train")) or {}
                row.append(fmt(stats.get("first_call_s"), ".2f"))
            rows.append(row)
        out.append(f"## {title} (s, includes tracing/compilation)\n")
        out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
        out.append("")

    # Ratios.
    kinds = [("infer", b, f"b{b}") for b in args.batches]
    if args.train_batch:
        kinds.append(("train", None, f"train b{args.train_batch}"))
    keras_backends = [b for b in workers if b in KERAS_BACKENDS]
    if keras_backends and any(c[0] == "keras_apps" for c in cols):
        header = ["model"] + [f"{b} {label}" for b in keras_backends for _, _, label in kinds]
        rows = []
        for key in models:
            if not MODELS[key]["keras_app"]:
                continue
            row = [MODELS[key]["label"]]
            for b in keras_backends:
                for kind, batch, _ in kinds:
                    ours = metric(table.get((key, "ours", b)), kind, batch)
                    ref = metric(table.get((key, "keras_apps", b)), kind, batch)
                    row.append(ratio(ours, ref))
            rows.append(row)
        out.append("## Ours / keras.applications, same backend (time ratio; < 1 means ours is "
                   "faster)\n")
        out.append(md_table(header, rows))
        out.append("")
    ab = {b: d for b, d in run.get("ab", {}).items() if d.get("rows")}
    if ab:
        labels = [f"inference b{b}" for b in args.batches]
        if args.train_batch:
            labels.append(f"train b{args.train_batch}")
        header = ["model"] + [f"{b} {label.replace('inference ', '')}" for b in ab
                              for label in labels]
        rows = []
        for key in models:
            if not MODELS[key]["keras_app"]:
                continue
            row = [MODELS[key]["label"]]
            for data in ab.values():
                by_kind = {r["measurement"]: r for r in data["rows"] if r["model"] == key}
                for label in labels:
                    r = by_kind.get(label)
                    row.append(f"{r['ratio']:.3f} ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})"
                               if r else "—")
            rows.append(row)
        out.append("## Ours / keras.applications, alternating in one process (`--ab`)\n")
        out.append(
            "`ab_keras_apps.py` per backend: both models built in one process, timed in "
            "alternating blocks (order flipped every round), so the machine's drift hits "
            "both; median of the per-round time ratios, quartiles in brackets. TensorFlow "
            "runs the graph path, JAX `jax.jit`, torch eager.\n")
        out.append(md_table(header, rows))
        out.append("")
    for b, data in run.get("ab", {}).items():
        if data.get("error"):
            out.append(f"- A/B {b}: {data['error']}")
    if keras_backends and "timm" in workers:
        header = ["model"]
        for _, _, label in kinds:
            header += [f"{label} best backend", f"{label} / eager", f"{label} / compiled"]
        rows = []
        for key in models:
            row = [MODELS[key]["label"]]
            for kind, batch, _ in kinds:
                times = {b: metric(table.get((key, "ours", b)), kind, batch)
                         for b in keras_backends}
                times = {b: t for b, t in times.items() if t}
                eager = metric(table.get((key, "timm_eager", "timm")), kind, batch)
                compiled = metric(table.get((key, "timm_compiled", "timm")), kind, batch)
                if times:
                    best = min(times, key=times.get)
                    row.append(f"{best} ({times[best]:.1f} ms)")
                    row.append(ratio(times[best], eager))
                    row.append(ratio(times[best], compiled))
                else:
                    row += ["—", "—", "—"]
            rows.append(row)
        out.append("## Ours on its fastest backend / timm (time ratio; < 1 means ours is "
                   "faster)\n")
        out.append(md_table(header, rows))
        out.append("")

    # Achieved fraction of peak.
    peak = run["peaks"].get(run["peak_ref"]) if run["peak_ref"] else None
    if peak:
        frac_kinds = [("infer", b, f"b{b}", 2) for b in args.batches]
        if args.train_batch:
            frac_kinds.append(("train", None, f"train b{args.train_batch}", 6))
        for kind, batch, label, factor in frac_kinds:
            rows = []
            for key in models:
                row = [MODELS[key]["label"]]
                for col in cols:
                    t = metric(table.get((key,) + col), kind, batch)
                    macs = record_macs(table, key, *col)
                    n = batch if kind == "infer" else args.train_batch
                    row.append(f"{100 * factor * macs * n / (t / 1e3) / peak:.1f}"
                               if t and macs else "—")
                rows.append(row)
            formula = "2·MACs·batch" if kind == "infer" else "6·MACs·batch (forward + backward)"
            out.append(f"## Achieved fraction of peak, {label} (%: {formula} / time / "
                       f"{peak / 1e9:,.0f} GFLOP/s)\n")
            out.append(md_table(["model"] + [column_label(c) for c in cols], rows))
            out.append("")

    # Errors.
    errors = []
    for (key, impl, backend), rec in sorted(table.items()):
        if "error" in rec:
            errors.append(f"- {key} {impl} {backend}: {rec['error']}")
        for stats in [s for v in rec.get("infer_all", {}).values() for s in v] + rec.get(
                "train_all", []):
            if "error" in stats:
                errors.append(f"- {key} {impl} {backend} path {stats['path']}: {stats['error']}")
        if rec.get("macs_error"):
            errors.append(f"- {key} {impl} {backend} MACs: {rec['macs_error']}")
    if errors:
        out.append("## Errors\n")
        out += errors
        out.append("")
    return "\n".join(out)


def plot(run, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = collect(run)
    cols = columns(run)
    settings = run["settings"]
    batches = settings["batches"]
    models = settings["models"].split(",")
    panels = [(b, f"inference, batch {b}") for b in batches]
    if settings.get("train_batch"):
        panels.append((None, f"training step, batch {settings['train_batch']}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    markers = {"ours": "o", "keras_apps": "s", "timm_eager": "^", "timm_compiled": "v"}
    colors = {"tensorflow": "tab:orange", "jax": "tab:blue", "torch": "tab:red",
              "timm": "tab:green"}
    for ax, (batch, title) in zip(axes[0], panels):
        for col in cols:
            xs, ys, names = [], [], []
            for key in models:
                rec = table.get((key,) + col)
                t = metric(rec, "infer" if batch else "train", batch)
                macs = record_macs(table, key, *col)
                if t and macs:
                    xs.append(macs / 1e6)
                    ys.append(t)
                    names.append(key)
            if not xs:
                continue
            color = colors[col[1]]
            if col[0] == "timm_compiled":
                color = "darkgreen"
            ax.scatter(xs, ys, marker=markers[col[0]], color=color, label=column_label(col),
                       alpha=0.8, facecolors="none" if col[0] == "keras_apps" else color)
            if col[0] == "ours":
                for x, y, name in zip(xs, ys, names):
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MMACs per image")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    device = "GPU" if settings["device"] == "gpu" else "CPU"
    fig.suptitle(f"MobileNet latency vs MACs ({device}, {run['machine'].get('cpu', '')})")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


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
