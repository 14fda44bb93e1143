"""The driver: starts the workers (one after the other, or with --parallel at
once, taking turns for their timed calls), restarts one that dies for the
models it has left, runs the --ab comparison, and writes the report, the JSON
and the plot after every worker, so that an interrupted run keeps what it has.

It imports neither Keras nor TensorFlow; only the peak matmul probe imports
torch (or numpy).
"""

import concurrent.futures
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    HERE,
    KERAS_BACKENDS,
    MODELS,
    REPO_ROOT,
    error_text,
    limit_threads,
    log,
    make_package_importable,
)
from plot import plot
from report import render_report
from timing import OVERRUN_S, measure_peak, out_of_time


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
    cmd = [sys.executable, str(HERE / "benchmark.py"), "--worker", "--backend", backend,
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


def driver(args):
    started = datetime.datetime.now()
    if args.threads:
        log(f"pinned to cores {limit_threads(args.threads)}")
    t_start = time.perf_counter()
    linked = make_package_importable()
    if linked:
        log(f"keras_mobilenets is not installed: imported from {REPO_ROOT} through {linked}")
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
