"""Export a MobileNet to LiteRT, int8 LiteRT, TF SavedModel and/or ONNX, and check
each artifact in its own runtime against the Keras model.

Examples:
    python examples/export.py --backend tensorflow --model v3_small --format litert litert_int8
    python examples/export.py --backend jax --model v4_hybrid_medium --format onnx
    python examples/export.py --backend torch --model v2_1.0 --format all --size 224

Formats (what Keras 3.15 supports from each backend):
    litert          TensorFlow: `model.export(path, format="litert")`, builtin ops only
    litert_int8     TensorFlow: int8 post-training quantisation with
                    tf.lite.TFLiteConverter, HARD_SWISH kept float for XNNPACK
                    (docs/deployment.md, "int8 LiteRT")
    tf_saved_model  TensorFlow, JAX (through jax2tf)
    onnx            TensorFlow (needs tf2onnx), JAX (needs jax2onnx), torch

Without `--weights` the model has random weights; its BatchNorm statistics are
then set from random images so that the comparison means something. With
`--weights imagenet` (or a checkpoint name / file) the pretrained model is
exported. The int8 model is calibrated on `--calibration images.npy` (N, H, W,
3 float32 images, preprocessed as the model expects; use a few hundred real
images for a real deployment), else on random images.

Prints one line per artifact: format, path, size, the max abs difference of
the runtime's output from the Keras output and, for int8, the top-1
agreement with the Keras model on 32 images.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = (
    "v1_1.0", "v1_0.75", "v1_0.5", "v1_0.25",
    "v2_1.0", "v2_0.75", "v2_0.5", "v2_0.35", "v2_1.4",
    "v3_large", "v3_small",
    "v4_conv_small", "v4_conv_medium", "v4_conv_large", "v4_hybrid_medium", "v4_hybrid_large",
)  # fmt: skip
FORMATS = {
    "tensorflow": ("litert", "litert_int8", "tf_saved_model", "onnx"),
    "jax": ("tf_saved_model", "onnx"),
    "torch": ("onnx",),
}
EXTENSIONS = {
    "litert": ".tflite",
    "litert_int8": ".int8.tflite",
    "tf_saved_model": "",
    "onnx": ".onnx",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="v3_small", choices=MODELS)
    parser.add_argument(
        "--format",
        nargs="+",
        default=["all"],
        choices=sorted({f for fs in FORMATS.values() for f in fs} | {"all"}),
        help="one or more formats; 'all' = every format the backend supports",
    )
    parser.add_argument(
        "--backend",
        choices=sorted(FORMATS),
        help="Keras backend (default: KERAS_BACKEND); only used when run as a script",
    )
    parser.add_argument("--size", type=int, default=224, help="input height = width")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--weights", default=None, help="None, 'imagenet', a checkpoint name or a file"
    )
    parser.add_argument("--out", default="exports", help="output folder")
    parser.add_argument("--batch", type=int, default=2, help="batch of the verification inputs")
    parser.add_argument("--calibration", help=".npy of images for int8 calibration")
    parser.add_argument("--no-verify", action="store_true", help="skip the runtime comparison")
    return parser.parse_args(argv)


def build_model(name, size, num_classes, weights):
    from mobilenet_v1 import create_mobilenetv1
    from mobilenet_v2 import create_mobilenetv2
    from mobilenet_v3 import create_mobilenetv3
    from mobilenet_v4 import create_mobilenetv4

    version, variant = name.split("_", 1)
    factory = {
        "v1": create_mobilenetv1,
        "v2": create_mobilenetv2,
        "v3": create_mobilenetv3,
        "v4": create_mobilenetv4,
    }[version]
    return factory(
        variant,
        input_shape=(size, size, 3),
        num_classes=num_classes,
        classifier_activation=None,  # compare logits
        weights=weights,
    )


def input_scale(name):
    """V3 rescales [0, 255] pixels itself; the other models take [-1, 1]."""
    return 255.0 if name.startswith("v3") else 1.0


def sample_images(batch, size, scale, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, (batch, max(size // 8, 1), max(size // 8, 1), 3))
    x = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :size, :size]
    x = np.clip(x + rng.normal(0.0, 0.2, x.shape), -1.0, 1.0)
    return ((x + 1.0) * 127.5 if scale == 255.0 else x).astype("float32")


def forward(model, x, training=False):
    """`model(x)` as numpy; jit-compiled on JAX, where op-by-op execution
    compiles every small op. With `training=True` the BatchNorm statistics
    are updated, on JAX as well."""
    import keras

    if keras.backend.backend() != "jax":
        return keras.ops.convert_to_numpy(model(x, training=training))
    import jax

    if not training:
        return keras.ops.convert_to_numpy(jax.jit(lambda x: model(x, training=False))(x))
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    step = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True))
    outputs, non_trainable = step(trainable, non_trainable, x)
    for variable, value in zip(model.non_trainable_variables, non_trainable):
        variable.assign(value)
    return keras.ops.convert_to_numpy(outputs)





def calibrate_batchnorm(model, x, seed=0):
    """Random BN gamma/beta (and LayerScale), BN statistics measured on `x` and
    a centred classifier, so that a randomly initialised model's logits and
    top-1 class depend on its input."""
    import keras
    import numpy as np

    from keras_mobilenets.weights.assign import leaf_layers

    rng = np.random.default_rng(seed)
    for _, layer in leaf_layers(model):
        if type(layer).__name__ == "LayerScale":  # 1e-5 at init: branches would not count
            (gamma,) = layer.get_weights()
            layer.set_weights([rng.uniform(0.1, 0.5, gamma.shape).astype("float32")])
    bns = [
        layer
        for _, layer in leaf_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        gamma, beta, mean, var = bn.get_weights()
        gamma = rng.uniform(0.5, 1.5, gamma.shape).astype("float32")
        bn.set_weights([gamma, rng.normal(0.0, 0.2, beta.shape).astype("float32"), mean, var])
        bn.momentum = 0.0
    forward(model, x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        # Floor near-zero variances: they would amplify float32 rounding.
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([gamma, beta, mean, np.maximum(var, np.median(var))])
    # Centre the logits on `x`, else one class wins for every image and the
    # int8 top-1 agreement is trivially 1.
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel, bias - forward(model, x).mean(axis=0)])


def export(model, fmt, path, representative=None):
    """Write one artifact with `model.export` (or the TFLite converter for int8)."""
    from keras_mobilenets.train_report import export_model

    if fmt in ("litert", "litert_int8"):
        export_model(model, fmt, path, representative)
    else:
        model.export(path, format=fmt, verbose=False)
    return path


def run(fmt, path, x):
    """Run an artifact in its runtime: ai_edge_litert, tf.saved_model or onnxruntime."""
    if fmt.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])
    if fmt == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # keep a reference while serving
        return loaded.serve(tf.constant(x)).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def artifact_size(path):
    """Bytes on disk: a folder's files, or a file plus its ONNX external data."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
        )
    extra = path + ".data"  # jax2onnx stores the weights next to the graph
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)


def main(argv=None):
    args = parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    backend = keras.backend.backend()
    formats = FORMATS[backend] if "all" in args.format else tuple(dict.fromkeys(args.format))
    unsupported = [f for f in formats if f not in FORMATS[backend]]
    if unsupported:
        raise SystemExit(
            f"Format(s) {unsupported} are not supported from the {backend} backend; "
            f"it supports {FORMATS[backend]}."
        )
    model = build_model(args.model, args.size, args.num_classes, args.weights)
    scale = input_scale(args.model)
    calibration = sample_images(32, args.size, scale, seed=1)
    if args.weights is None:
        calibrate_batchnorm(model, calibration[:16])
    if args.calibration:
        calibration = np.load(args.calibration).astype("float32")
    x = sample_images(args.batch, args.size, scale, seed=2)
    # A call of the model before export: jax2onnx needs a model that was called.
    expected = forward(model, x)
    print(f"{args.model} on {backend}: Keras logits up to {np.abs(expected).max():.3g}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    results = []
    for fmt in formats:
        path = os.path.join(args.out, f"{args.model}_{args.size}_{backend}{EXTENSIONS[fmt]}")
        export(model, fmt, path, representative=calibration)
        result = {"format": fmt, "path": path, "bytes": artifact_size(path), "max_abs_diff": None}
        if not args.no_verify:
            got = run(fmt, path, x)
            result["max_abs_diff"] = float(np.max(np.abs(got.astype("float64") - expected)))
            if fmt == "litert_int8":
                x_eval = sample_images(32, args.size, scale, seed=3)
                top1 = np.argmax(run(fmt, path, x_eval), -1) == np.argmax(
                    forward(model, x_eval), -1
                )
                result["top1_agreement"] = float(np.mean(top1))
        results.append(result)
        line = f"{fmt:<15} {path}  {result['bytes'] / 1e6:.2f} MB"
        if result["max_abs_diff"] is not None:
            line += f"  max abs diff {result['max_abs_diff']:.3g}"
        if "top1_agreement" in result:
            line += f"  top-1 agreement {result['top1_agreement']:.2f}"
        print(line, flush=True)
    return results


if __name__ == "__main__":
    _args = parse_args()
    if _args.backend:
        os.environ["KERAS_BACKEND"] = _args.backend
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        # TensorFlow is used for LiteRT / SavedModel; in this environment torch,
        # if anything imports it, must come first (the reverse order segfaults).
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
    main()
