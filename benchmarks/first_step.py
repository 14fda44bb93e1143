"""Time of the first `fit` on TensorFlow, where tracing the train step is most
of it: ours, ours through Keras' own build path, and keras.applications.

Keras builds the optimizer's slot variables (Adam: two per weight) and the
compiled metrics inside the first trace of the train function unless a
distribution strategy is set, and `tf.function` traces a function that
created variables a second time. Our models build them before the trace
(`FastFunctional._maybe_symbolic_build`); "ours, Keras' path" puts Keras'
method back on the same model to measure the difference.

Each case runs in a fresh process, one after another, on one thread: the
factory at `--size` px with 10 classes, `compile(Adam, accuracy)`, then one
`fit` epoch over two batches of 32 with validation data. Prints a Markdown
table: seconds for that `fit` call and the number of train-step traces.

    python benchmarks/first_step.py
    python benchmarks/first_step.py --models v3_small v4_conv_small --policy mixed_float16
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, run_child  # noqa: E402

BUILD = {
    "v1": ("from keras_mobilenets import create_mobilenetv1 as f", 'f("1.0", {kw})',
           "keras.applications.MobileNet({app})"),
    "v2": ("from keras_mobilenets import create_mobilenetv2 as f", 'f("1.0", {kw})',
           "keras.applications.MobileNetV2({app})"),
    "v3_small": ("from keras_mobilenets import create_mobilenetv3 as f", 'f("small", {kw})',
                 "keras.applications.MobileNetV3Small({app})"),
    "v3_large": ("from keras_mobilenets import create_mobilenetv3 as f", 'f("large", {kw})',
                 "keras.applications.MobileNetV3Large({app})"),
    "v4_conv_small": ("from keras_mobilenets import create_mobilenetv4 as f",
                      'f("conv_small", {kw})', None),
}

CHILD = """
import json, sys, time, types
sys.path.insert(0, {root!r})
import keras
import numpy as np
keras.config.set_dtype_policy({policy!r})
{imports}
kw = dict(input_shape=({size}, {size}, 3), num_classes=10)
app = dict(input_shape=({size}, {size}, 3), classes=10, weights=None)
model = {build}
if {keras_path}:
    from keras.src.models.functional import Functional
    model._maybe_symbolic_build = types.MethodType(Functional._maybe_symbolic_build, model)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
traces = []
step = model.train_step
model.train_step = lambda *args: traces.append(1) or step(*args)
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (64, {size}, {size}, 3)).astype("float32")
y = rng.integers(0, 10, 64)
t0 = time.perf_counter()
model.fit(x, y, batch_size=32, epochs=1, validation_data=(x, y), verbose=0)
print("RESULT " + json.dumps(dict(seconds=time.perf_counter() - t0, traces=len(traces))))
"""

CASES = {"ours": (False, False), "ours, Keras' path": (False, True),
         "keras.applications": (True, False)}


def measure(model, case, size, policy):
    apps, keras_path = CASES[case]
    imports, ours, theirs = BUILD[model]
    if apps and theirs is None:
        return None
    code = CHILD.format(root=str(REPO_ROOT), policy=policy, imports=imports if not apps else "",
                        size=size, keras_path=keras_path,
                        build=(theirs if apps else ours).format(kw="**kw", app="**app"))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    return run_child(code, env, f"{model} {case}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["v1", "v3_small", "v4_conv_small"],
                        choices=list(BUILD))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--policy", default="float32", help="Keras dtype policy")
    args = parser.parse_args(argv)
    print(f"First `fit` on TensorFlow, {args.size} px, {args.policy}: seconds (train-step traces)")
    print()
    print("| model | " + " | ".join(CASES) + " |")
    print("|---|" + "---:|" * len(CASES))
    for model in args.models:
        cells = []
        for case in CASES:
            result = measure(model, case, args.size, args.policy)
            cells.append("n/a" if result is None
                         else f"{result['seconds']:.1f} ({result['traces']})")
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
