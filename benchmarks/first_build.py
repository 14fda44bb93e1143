"""Time to build each variant in a fresh process: what a user waits for after
`import`, before the first batch (issue: JAX first build).

Each (backend, variant) runs in its own Python process, one after another:
import Keras and the package (timed apart), then `create_mobilenetvN(variant)`
with random weights at its default size. No persistent compilation cache is
used (JAX has none unless configured). Prints a Markdown table.

    python benchmarks/first_build.py --backends jax torch tensorflow
    python benchmarks/first_build.py --backends jax --variants v3:large v4:hybrid_large
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_child  # noqa: E402

VARIANTS = {
    "v1": ["1.0", "0.25"],
    "v2": ["1.0", "1.4", "0.35"],
    "v3": ["large", "small"],
    "v4": ["conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large"],
}

CHILD = """
import json, time
t0 = time.perf_counter()
import keras
import keras_mobilenets
t1 = time.perf_counter()
factory = getattr(keras_mobilenets, "create_mobilenet{version}")
model = factory({variant!r})
t2 = time.perf_counter()
print("RESULT " + json.dumps(dict(imports=t1 - t0, build=t2 - t1, params=model.count_params())))
"""


def measure(backend, version, variant):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    code = CHILD.format(version=version, variant=variant)
    return run_child(code, env, f"{backend} {version} {variant}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["jax"],
                        choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--variants", nargs="+", metavar="VERSION:VARIANT",
                        help="default: " + " ".join(f"{v}:{n}" for v, ns in VARIANTS.items()
                                                    for n in ns))
    args = parser.parse_args(argv)
    cases = ([tuple(c.split(":", 1)) for c in args.variants] if args.variants
             else [(v, n) for v, ns in VARIANTS.items() for n in ns])
    print("| model | " + " | ".join(f"{b} build s (imports s)" for b in args.backends) + " |")
    print("|---|" + "---:|" * len(args.backends))
    for version, variant in cases:
        cells = []
        for backend in args.backends:
            r = measure(backend, version, variant)
            cells.append(f"{r['build']:.2f} ({r['imports']:.1f})")
        print(f"| {version} {variant} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
