"""The worker processes: one per Keras backend (KERAS_BACKEND is fixed per
process) and one for timm, started by the driver as `benchmark.py --worker`.

Each writes its results as JSON after every measurement, so that a worker that
crashes or times out still leaves what it measured.
"""

import gc
import json
import os
import subprocess
import sys
import time
import traceback

from common import MODELS, REPO_ROOT, error_text, keras_build_code, log
from timing import SKIPPED, Turns, measure_calls, model_turn, out_of_time

# Inference / training paths a Keras worker tries on each backend. Every path
# is Keras' own `predict_on_batch` / `train_on_batch`; they differ only in the
# model's `jit_compile` (TensorFlow: XLA or a plain tf.function graph; JAX:
# always jax.jit; torch: eager, or torch.compile with --keras-torch-compile).
KERAS_PATHS = {
    "tensorflow": {"xla": True, "graph": False},
    "jax": {"jit": True},
    "torch": {"eager": False, "compile": True},
}


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
        from keras_mobilenets import count_macs
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


def _bench_keras_model(record, spec, impl, size, paths, count_macs, args, keras, np, importlib,
                       flush, phases, turns):
    input_shape = (size, size, 3)
    if impl == "ours":
        module = importlib.import_module(spec["module"])
        if "v4_variant" in spec:
            default = module.VARIANTS[spec["v4_variant"]].arch.default_size
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
