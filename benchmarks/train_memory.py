"""Peak memory of a training step: ours on each backend beside timm eager.

Each (model, implementation) runs in a fresh process of its own, one after
the other, so that no two compete for the machine's memory: it builds the
model at its default resolution, then runs `--steps` training steps at
`--batch` (Keras: `compile` with SGD and `train_on_batch`, the default
`jit_compile`; timm: forward, cross-entropy, backward, SGD step). Reported:
the process's peak resident memory (`ru_maxrss`) above its resident memory
before the model was built (framework imported and started), which is the
model, what training adds (activations kept for the backward pass,
gradients, on JAX the compiled step) and the framework's working memory;
the whole peak; and the median step time. A worker the kernel kills (out of memory) is reported as such.

    python benchmarks/train_memory.py --out benchmarks/train_memory.md
    python benchmarks/train_memory.py --models v4_conv_large --impls jax --remat
    python benchmarks/train_memory.py --impls jax --fusion-emitters
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    KERAS_BACKENDS,
    MODELS,
    REPO_ROOT,
    compiled_model_and_batch,
    status_gb,
)

IMPLS = KERAS_BACKENDS + ("timm",)


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def keras_steps(spec, batch, remat):
    import keras
    import numpy as np

    scope = keras.RematScope(mode="full") if remat else None
    model, x, y = compiled_model_and_batch(spec, batch, scope=scope)
    return model, lambda: float(np.asarray(model.train_on_batch(x, y)))


def timm_steps(spec, batch, remat):
    import timm
    import torch

    model = timm.create_model(spec["timm"], pretrained=False).train()
    if remat:
        model.set_grad_checkpointing(True)
    size = spec["size"]
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss)

    return model, step


def worker(impl, key, batch, steps, remat, fusion_emitters=False):
    if impl == "timm":
        import torch  # noqa: F401  (before anything that may import TensorFlow)
    else:
        os.environ["KERAS_BACKEND"] = impl
        if impl == "torch":
            import torch  # noqa: F401
    sys.path.insert(0, str(REPO_ROOT))
    spec = MODELS[key]
    if impl == "timm":
        import timm  # noqa: F401
        build = timm_steps
    else:
        import keras

        import keras_mobilenets  # noqa: F401
        if fusion_emitters:  # the train step as compiled before 2026-12-05 (thirteenth session)
            from keras_mobilenets.layers import compile_memory

            compile_memory._CPU_OPTIONS["xla_cpu_use_fusion_emitters"] = True
        keras.ops.zeros(1)  # the backend's runtime started, as before any model
        build = keras_steps
    base = status_gb()
    _, step = build(spec, batch, remat)
    built = status_gb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    if loss != loss:
        raise RuntimeError("the loss is NaN")
    # The first step compiles (JAX, TensorFlow's graph); the median of the rest.
    print(json.dumps(dict(base_gb=base, built_gb=built, peak_gb=peak_gb(),
                          in_use_gb=tensorflow_in_use_gb(impl),
                          step_s=statistics.median(times[1:] or times))))


def tensorflow_in_use_gb(impl):
    """TensorFlow's own count of the most memory its tensors held at once, in
    GB, where its allocator keeps one (oneDNN's pooling `mklcpu` allocator,
    whose pool can hold more than that: the resident peak is then the pool's
    high-water mark, which moves between runs); else None."""
    if impl != "tensorflow":
        return None
    import tensorflow as tf

    try:
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except ValueError:  # the default CPU allocator keeps no statistics
        return None
    # oneDNN with the system allocator (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1) answers 0
    return peak / 2**30 if peak else None


def run_one(impl, key, args):
    cmd = [sys.executable, __file__, "--worker", impl, key, "--batch", str(args.batch),
           "--steps", str(args.steps)] + (["--remat"] if args.remat else []) + (
               ["--fusion-emitters"] if args.fusion_emitters else [])
    env = dict(os.environ)
    if args.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[name] = str(args.threads)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.worker_timeout} s"}
    wall = time.perf_counter() - t0
    if proc.returncode == -9:
        return {"error": "killed (out of memory)", "wall_s": wall}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        oom = "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower()
        return {"error": "out of memory" if oom else tail[0][:200], "wall_s": wall}
    return dict(json.loads(lines[-1]), wall_s=wall)


def cell(result):
    if "error" in result:
        return result["error"]
    in_use = result.get("in_use_gb")
    in_use = "" if in_use is None else f", tensors {in_use:.2f}"
    return (f"{result['peak_gb'] - result['base_gb']:.2f} ({result['peak_gb']:.2f}){in_use}, "
            f"{result['step_s']:.2f} s")


def render(results, args):
    remat = ('on (ours: `keras.RematScope(mode="full")`; timm: `set_grad_checkpointing`)'
             if args.remat else "off")
    lines = [
        f"# Peak memory of a training step, batch {args.batch}, default resolution",
        "",
        f"`python benchmarks/train_memory.py {' '.join(sys.argv[1:])}`",
        "",
        "Each cell: the worker's peak resident memory in GB above its memory before the "
        "model was built (the framework imported and started: that part differs by framework, "
        "not by model), the whole peak in brackets, and the median step time "
        f"({args.steps} steps, the first one excluded); for TensorFlow with oneDNN, whose "
        "allocator pools memory, also the most its tensors held at once (\"tensors\", "
        "TensorFlow's own statistics). Ours: `train_on_batch`, "
        f"default `jit_compile`; timm: eager. Rematerialisation: {remat}.",
        "",
        "| model | " + " | ".join(("ours " + i) if i != "timm" else "timm eager"
                                 for i in args.impls) + " | ours / timm (above the framework) |",
        "|---|" + "---:|" * (len(args.impls) + 1),
    ]
    for key in args.models:
        row = results[key]
        ratios = []
        ref = row.get("timm", {})
        for impl in args.impls:
            if impl != "timm" and "peak_gb" in row[impl] and "peak_gb" in ref:
                ours = row[impl]["peak_gb"] - row[impl]["base_gb"]
                ratios.append(f"{impl} {ours / (ref['peak_gb'] - ref['base_gb']):.2f}")
        lines.append(f"| {MODELS[key]['label']} ({MODELS[key]['size']}²) | "
                     + " | ".join(cell(row[i]) for i in args.impls)
                     + f" | {', '.join(ratios) or '—'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--remat", action="store_true",
                        help="rematerialise in the backward pass (ours and timm)")
    parser.add_argument("--fusion-emitters", action="store_true",
                        help="JAX: compile the train step with XLA:CPU's MLIR fusion emitters")
    parser.add_argument("--threads", type=int, default=0,
                        help="thread count of each worker (0: the libraries' default)")
    parser.add_argument("--worker-timeout", type=int, default=1800)
    parser.add_argument("--out", help="write the table (Markdown) here, and JSON beside it")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker, args.batch, args.steps, args.remat, args.fusion_emitters)
    results = {}
    for key in args.models:
        results[key] = {}
        for impl in args.impls:
            result = run_one(impl, key, args)
            results[key][impl] = result
            print(f"{key:18s} {impl:10s} {cell(result)}", file=sys.stderr, flush=True)
    table = render(results, args)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
