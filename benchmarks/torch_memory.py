"""Peak of the memory torch allocates in one training step and in one eager
inference call: ours on the torch backend beside timm, without the C heap's
noise that resident-memory figures carry (`train_memory.py`).

Each (model, implementation) runs in a fresh process: it builds the model at
its default resolution, runs two steps (or calls), then records a third with
torch's profiler (`profile_memory`) and reads its memory timeline (the
profiler's own, `MemoryProfileTimeline`, which `export_memory_timeline`
plots). Reported: the largest total of live torch allocations during that
step, weights and the batch included, in MiB. Training: `train_memory.py`'s
steps (ours through `train_on_batch`, SGD, the batch as a NumPy array; timm
forward, cross-entropy, backward and SGD step); inference: ours called on
a torch tensor under `torch.no_grad()`, timm's eval-mode module. `--keras-walk`
adds ours as before `FastFunctional`'s graph walk and `layers.recompute`:
Keras' own walk (every tensor kept until the forward pass ends) and V3's
rescaled batch kept for the backward pass.

    python benchmarks/torch_memory.py --out benchmarks/torch_memory.md --keras-walk
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MODELS, REPO_ROOT, keras_build_code  # noqa: E402
from train_memory import keras_steps, timm_steps  # noqa: E402

IMPLS = ("ours", "ours, Keras' walk", "timm")


def peak_mib(run):
    """The largest total of live torch CPU allocations while `run()` runs."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        run()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return max(sum(row) for row in sizes) / 2**20


def worker(impl, key, mode, batch):
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np
    import torch

    spec = MODELS[key]
    size = spec["size"]
    if impl != "timm":
        sys.path.insert(0, str(REPO_ROOT))
        from keras.src.models.functional import Functional

        from keras_mobilenets.layers import recompute
        from keras_mobilenets.layers.fast_call import FastFunctional

        if impl != "ours":  # the state before the graph walk and the recompute
            FastFunctional._run_through_graph = Functional._run_through_graph
            recompute.register = lambda *args: None
    if mode == "train":  # train_memory.py's steps, resident memory aside
        _, run = (timm_steps if impl == "timm" else keras_steps)(spec, batch, remat=False)
    elif impl == "timm":
        import timm

        model = timm.create_model(spec["timm"], pretrained=False).eval()
        x = torch.randn(batch, 3, size, size)

        def run():
            with torch.no_grad():
                model(x)
    else:
        namespace = {}
        exec(keras_build_code(spec, "ours", (size, size, 3)), namespace)
        model = namespace["build"]()
        rng = np.random.default_rng(0)
        x = torch.as_tensor(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))

        def run():
            with torch.no_grad():
                model(x, training=False)
    run(), run()
    print(json.dumps({"peak_mib": peak_mib(run)}))


def measure(impl, key, mode, batch):
    cmd = [sys.executable, __file__, "--worker", impl, key, mode, "--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


def render(results, args, impls):
    lines = [
        f"# Torch-allocated peak of one step, batch {args.batch}, default resolution",
        "",
        f"{datetime.date.today()}: "
        f"`python benchmarks/torch_memory.py {' '.join(sys.argv[1:])}`",
        "",
        "MiB: the largest total of live torch CPU allocations (weights and batch included) "
        "while one training step (`train`) or one eager inference call (`infer`) ran, "
        "from torch's profiler; each cell a process of its own.",
        "",
        "| model | mode | " + " | ".join(impls) + " | ours / timm |",
        "|---|---|" + "---:|" * (len(impls) + 1),
    ]
    for (key, mode), row in results.items():
        cells = [f"{row[i]['peak_mib']:.1f}" if "peak_mib" in row[i] else row[i]["error"]
                 for i in impls]
        ratio = ("—" if "peak_mib" not in row["ours"] or "peak_mib" not in row["timm"]
                 else f"{row['ours']['peak_mib'] / row['timm']['peak_mib']:.3f}")
        lines.append(f"| {MODELS[key]['label']} | {mode} | " + " | ".join(cells)
                     + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["train", "infer"],
                        choices=["train", "infer"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--keras-walk", action="store_true",
                        help="also ours with Keras' graph walk and no recompute (the state before)")
    parser.add_argument("--out", help="write the table (Markdown) here, and JSON beside it")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "MODEL", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker, args.batch)
    impls = [i for i in IMPLS if args.keras_walk or i != "ours, Keras' walk"]
    results = {}
    for key in args.models:
        for mode in args.modes:
            row = results[key, mode] = {}
            for impl in impls:
                row[impl] = measure(impl, key, mode, args.batch)
                print(key, mode, impl, row[impl], flush=True)
    table = render(results, args, impls)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump([{"model": k, "mode": m, **row} for (k, m), row in results.items()], f,
                      indent=1)


if __name__ == "__main__":
    main()
