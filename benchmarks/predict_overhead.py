"""Where ours, compiled on torch, loses to timm compiled in inference: Keras'
`predict_on_batch` (per-call Python, the NumPy result) against the compiled
predict function alone, beside timm's `torch.compile`, in one process,
alternating rounds; with `--profile` the kernels of one call of each.

    python benchmarks/predict_overhead.py --model v3_small --batch 256 --mixed-precision

On a GPU (benchmarks/README.md "GPU") or the CPU (no GPU visible). Prints a
table: median ms per call over the rounds (each round's figure the mean of
`--calls` calls in a row, runners in alternating order, as
`torch_overhead.py`) and the median of the per-round ratios to timm
compiled.
"""

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import MODELS, REPO_ROOT, keras_build_code, make_package_importable  # noqa: E402
from timing import alternate  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="v3_small", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=None,
                        help="input size (default: the model's); a small one leaves the host's work")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 compute")
    parser.add_argument("--profile", action="store_true", help="top kernels of one call each")
    args = parser.parse_args()
    make_package_importable()
    sys.path.insert(0, str(REPO_ROOT))  # the mobilenet_v* modules
    import keras
    import numpy as np
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = MODELS[args.model]
    size = args.size or spec["size"]
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    namespace = {}
    exec(keras_build_code(spec, "ours", (size, size, 3)), namespace)
    ours = namespace["build"]()
    ours.compile(jit_compile=True)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32"))
    ref = timm.create_model(spec["timm"], pretrained=False).to(device).eval()
    ref_c = torch.compile(ref, dynamic=False)
    xt = torch.randn(args.batch, 3, size, size, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.mixed_precision)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timm_compiled():
        with torch.inference_mode(), autocast:
            ref_c(xt)
        sync()

    def predict_on_batch():
        ours.predict_on_batch(x)  # NumPy result: synced

    def predict_function():
        ours.predict_function([(x,)])  # what predict_on_batch calls, on the device
        sync()

    runners = {"timm compiled": timm_compiled, "ours predict_on_batch": predict_on_batch,
               "ours predict_function": predict_function}
    for name, fn in runners.items():
        t0 = time.perf_counter()
        fn()
        print(f"{name}: first call {time.perf_counter() - t0:.1f} s", flush=True)
    rounds = alternate(runners, args.rounds, args.calls)
    ratios = {name: [a / b for a, b in zip(values, rounds["timm compiled"])]
              for name, values in rounds.items()}
    print(f"\n{args.model}, batch {args.batch}, {size}x{size}, {device}, "
          f"{'mixed bfloat16' if args.mixed_precision else 'float32'}: "
          f"{args.rounds} rounds of {args.calls} calls")
    print("| runner | median ms | rounds (min-max) | / timm compiled (min-max) |")
    print("|---|---:|---:|---:|")
    for name, values in rounds.items():
        r = ratios[name]
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} | "
              f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda"
                                               else [])
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        for name in ("timm compiled", "ours predict_function"):
            with profile(activities=activities) as prof:
                for _ in range(3):
                    runners[name]()
            print(f"\n{name}, 3 calls:")
            print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
