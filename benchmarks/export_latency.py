"""Latency of the exported models, in the runtimes users deploy them with.

For each model, ours is exported beside the references and every file is
timed in the same process, alternating (see `time_files`):

* LiteRT (`ai_edge_litert`, XNNPACK, batch 1, 1 and 2 threads): float32 and
  full-integer int8 `.tflite`, ours and keras.applications' (V1-V3), both
  from the TensorFlow backend with the same weights; and with
  `--litert-torch-python`, timm's `.tflite` converted by litert-torch (every
  version; float32, and int8 through its PT2E quantizer), plain (NCHW input)
  and with our input contract.
  litert-torch pins typing_extensions 4.12.2, so it lives in a virtual
  environment of its own (see `--litert-torch-python`).
* ONNX (onnxruntime, 1 thread, batch 1 and 32): ours from the TensorFlow
  backend (tf2onnx) against keras.applications' exported the same way (same
  weights), and ours from the torch backend (torch.onnx) against timm's own
  `torch.onnx.export` (ours given timm's weights), and against timm exported
  with our input contract (channels-last images, V3's rescaling in the
  graph), which is what a timm user deploying for our input would run; and
  ours from torch with keras.applications' weights and padding against
  keras.applications' ONNX; and V3 built with `include_preprocessing=False`
  (normalised images in, as timm's export takes them) against timm's.

Op counts per graph (`.tflite` operators; ONNX nodes after onnxruntime's own
graph optimisation, which is what runs) say where the time goes.

Usage:

    python benchmarks/export_latency.py --out benchmarks/export_latency.md

Export runs in one subprocess per backend (`--phase export-tensorflow`,
`--phase export-torch`); the timing needs neither Keras nor torch. The
report is written by `export_report.py`.
"""

import argparse
import collections
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import MODELS, log  # noqa: E402
from export_report import render  # noqa: E402

DEFAULT_MODELS = ["v1", "v2", "v3_large", "v3_small", "v4_conv_small", "v4_conv_medium",
                  "v4_hybrid_medium"]
SEED = 0


# ------------------------------------------------------------------ export


def images(spec, batch, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = spec["size"]
    high = 255.0 if spec["module"] == "mobilenet_v3" else 1.0
    low = 0.0 if high == 255.0 else -1.0
    return rng.uniform(low, high, (batch, size, size, 3)).astype("float32")


def build_ours(spec, weights=None, **kwargs):
    import importlib

    module = importlib.import_module(spec["module"])
    size = spec["size"]
    return getattr(module, spec["factory"])(
        **spec["kwargs"], input_shape=(size, size, 3), weights=weights, **kwargs)


def export_tensorflow(keys, workdir):
    """Ours and keras.applications' (same weights): float and int8 .tflite, ONNX."""
    import keras
    import numpy as np

    from keras_mobilenets.train_report import export_model
    from keras_mobilenets.weights.assign import transfer_from_keras_model

    for key in keys:
        spec = MODELS[key]
        keras.utils.set_random_seed(SEED)
        ours = build_ours(spec)
        models = {"ours_tf": ours}
        if spec["keras_app"]:
            size = spec["size"]
            ref = getattr(keras.applications, spec["keras_app"])(
                input_shape=(size, size, 3), weights=None)
            transfer_from_keras_model(ours, ref)
            models["keras_tf"] = ref
        x = images(spec, 1, 1)
        representative = images(spec, 8, 2)
        outputs = {}
        for name, model in models.items():
            outputs[name] = keras.ops.convert_to_numpy(model(x, training=False))
            stem = workdir / f"{key}.{name}"
            log(f"export {key} {name}")
            for fmt, suffix in (("litert", ".tflite"), ("litert_int8", ".int8.tflite"),
                                ("onnx", ".onnx")):
                try:
                    export_model(model, fmt, str(stem) + suffix, representative)
                except Exception as exc:  # reported, not fatal: the other files still count
                    log(f"export {key} {name} {fmt} failed: {type(exc).__name__}: {exc}")
        if "keras_tf" in models:  # for ours exported from torch with these weights
            ours.save_weights(str(workdir / f"{key}.ours_tf.weights.h5"))
        np.savez(workdir / f"{key}.tensorflow.npz", x=x, **outputs)


def rescaling_of(ours):
    """Our `rescaling` layer's scale and offset (scalars or per-channel
    vectors, as the layer has them), or (None, None)."""
    import numpy as np

    try:
        rescaling = ours.get_layer("rescaling")
    except ValueError:
        return None, None
    return np.array(rescaling.scale, "float32"), np.array(rescaling.offset, "float32")


def same_input_model(reference, scale=None, offset=None):
    """`reference` (a timm model) behind our model's input handling: NHWC in,
    then our `rescaling` layer's multiply-add (`rescaling_of`), if ours has one."""
    import torch

    if scale is not None:  # channels-last, so per-channel vectors broadcast
        scale, offset = torch.tensor(scale), torch.tensor(offset)

    class _SameInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = reference

        def forward(self, x):
            if scale is not None:
                x = x * scale + offset
            return self.model(x.permute(0, 3, 1, 2))

    return _SameInput().eval()


def export_torch(keys, workdir):
    """timm's `torch.onnx.export`, and ours on the torch backend with timm's weights."""
    import keras
    import numpy as np
    import timm
    import torch
    from safetensors.torch import save_file

    for key in keys:
        spec = MODELS[key]
        torch.manual_seed(SEED)
        reference = timm.create_model(spec["timm"], pretrained=False).eval()
        checkpoint = workdir / f"{key}.timm.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(checkpoint))
        ours = build_ours(spec, weights=str(checkpoint))
        x = images(spec, 1, 1)
        log(f"export {key} timm, ours_torch")
        with torch.no_grad():
            expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
            torch.onnx.export(
                reference, (torch.zeros(1, 3, spec["size"], spec["size"]),),
                str(workdir / f"{key}.timm.onnx"), input_names=["input"],
                output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                dynamo=False)
        # timm with our input contract: channels-last images in our range, the
        # permute and our Rescaling (V3) inside the graph, as in ours
        scale, offset = rescaling_of(ours)
        same_input = same_input_model(reference, scale, offset)
        with torch.no_grad():
            expected_same = same_input(torch.from_numpy(x)).numpy()
            torch.onnx.export(
                same_input, (torch.zeros(1, spec["size"], spec["size"], 3),),
                str(workdir / f"{key}.timm_same_input.onnx"), input_names=["input"],
                output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        got = keras.ops.convert_to_numpy(ours(x, training=False))  # Keras exports called models
        ours.export(str(workdir / f"{key}.ours_torch.onnx"), format="onnx", verbose=False)
        extra = {}
        keras_weights = workdir / f"{key}.ours_tf.weights.h5"
        if keras_weights.exists():  # keras.applications' weights and padding, from torch
            ours_keras = build_ours(spec)
            ours_keras.load_weights(str(keras_weights))
            extra["ours_torch_keras"] = keras.ops.convert_to_numpy(ours_keras(x, training=False))
            ours_keras.export(str(workdir / f"{key}.ours_torch_keras.onnx"), format="onnx",
                              verbose=False)
        if scale is not None:  # for the litert-torch phase
            extra.update(rescale_scale=scale, rescale_offset=offset)
            # ours without the Rescaling, fed normalised images as timm's export is
            raw = build_ours(spec, weights=str(checkpoint), include_preprocessing=False)
            extra["x_raw"] = x * scale + offset
            extra["ours_torch_raw"] = keras.ops.convert_to_numpy(raw(extra["x_raw"], training=False))
            raw.export(str(workdir / f"{key}.ours_torch_raw.onnx"), format="onnx", verbose=False)
        np.savez(workdir / f"{key}.torch.npz", x=x, timm=expected, ours_torch=got,
                 timm_same_input=expected_same, **extra)
        os.remove(checkpoint)


def export_litert_torch(keys, workdir):
    """timm's `.tflite` through litert-torch, the same weights as its ONNX (the
    same seed; run after `export_torch`, whose torch outputs `measure` checks
    the float files against): float32, and int8 by litert-torch's PT2E route
    (per-channel symmetric weights, static activations calibrated on the same
    8 images as ours' representative dataset)."""
    import litert_torch
    import numpy as np
    import timm
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    def int8(model, example, calibration):
        graph = torch.export.export(model, example).module()
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
        graph = move_exported_model_to_eval(quantize_pt2e.prepare_pt2e(graph, quantizer))
        for image in calibration:
            graph(image[None])
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
        return litert_torch.convert(graph, example,
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))

    for key in keys:
        spec = MODELS[key]
        saved = np.load(workdir / f"{key}.torch.npz")
        torch.manual_seed(SEED)
        reference = timm.create_model(spec["timm"], pretrained=False).eval()
        same_input = same_input_model(reference, saved.get("rescale_scale"),
                                      saved.get("rescale_offset"))
        size = spec["size"]
        calibration = images(spec, 8, 2)  # ours' representative dataset
        for name, model, nchw in (("timm", reference, True),
                                  ("timm_same_input", same_input, False)):
            log(f"export {key} {name} (litert-torch)")
            example = (torch.zeros((1, 3, size, size) if nchw else (1, size, size, 3)),)
            litert_torch.convert(model, example).export(str(workdir / f"{key}.{name}.tflite"))
            images_in = torch.from_numpy(to_nchw(calibration) if nchw else calibration)
            int8(model, example, images_in).export(str(workdir / f"{key}.{name}.int8.tflite"))


# ------------------------------------------------------------------ runtimes


def to_nchw(x):
    import numpy as np

    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def once_per_array(prepare):
    """`prepare(x)`, computed once per input array (by identity), so that
    input conversions stay outside the timed calls."""
    cache = [None, None]

    def get(x):
        if cache[0] is not x:
            cache[:] = [x, prepare(x)]
        return cache[1]

    return get


def litert_runner(path, threads, batch_shape):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    transpose = tuple(inp["shape"][1:2]) == (3,)  # timm through litert-torch: NCHW
    if transpose:
        batch_shape = (batch_shape[0], batch_shape[3], batch_shape[1], batch_shape[2])
    interpreter.resize_tensor_input(inp["index"], batch_shape)
    interpreter.allocate_tensors()
    # litert-torch's int8 graphs may take and give int8 tensors: the input is
    # quantized, and the output dequantized, outside the timed calls
    integer_in = np.issubdtype(inp["dtype"], np.integer)
    integer_out = np.issubdtype(out["dtype"], np.integer)

    @once_per_array
    def prepare(x):
        if transpose:
            x = to_nchw(x)
        if integer_in:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
        return x

    def run(x):
        interpreter.set_tensor(inp["index"], prepare(x))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if integer_out:
            scale, zero = out["quantization"]
            y = (y.astype("float32") - zero) * scale
        return y

    return run


def onnx_runner(path, threads, batch_shape, optimized_path=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    transpose = tuple(session.get_inputs()[0].shape[1:2]) == (3,)  # timm: NCHW
    prepare = once_per_array(to_nchw) if transpose else (lambda x: x)

    def run(x):
        return session.run(None, {name: prepare(x)})[0]

    return run


def time_files(runners, x, rounds, target_s=0.25):
    """Milliseconds per call of each runner, one value per round.

    Each round runs every runner for one block of calls, in a shuffled order,
    so that a slow phase of the machine hits all of them; the ratio of a
    round is taken inside the round.
    """
    names = list(runners)
    for run in runners.values():  # warm up; size the block from the slowest
        run(x)
    start = time.perf_counter()
    for run in runners.values():
        run(x)
    calls = max(1, int(target_s / max(1e-4, (time.perf_counter() - start) / len(names))))
    per_call = {name: [] for name in names}
    rng = random.Random(SEED)
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            run = runners[name]
            start = time.perf_counter()
            for _ in range(calls):
                run(x)
            per_call[name].append((time.perf_counter() - start) / calls * 1e3)
    return per_call


def ratio(per_call, name, reference):
    """Median and spread of the per-round ratios name / reference."""
    values = sorted(a / b for a, b in zip(per_call[name], per_call[reference]))
    return statistics.median(values), values[0], values[-1]


# ------------------------------------------------------------------ op counts

def tflite_ops(path):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    counts = collections.Counter()
    for i in range(graph.OperatorsLength()):
        code = codes[graph.Operators(i).OpcodeIndex()]
        counts[names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]] += 1
    return counts


def onnx_ops(path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(node.op_type for node in model.graph.node)


# ------------------------------------------------------------------ timing


def measure(keys, workdir, rounds):
    import numpy as np

    results = []
    for key in keys:
        spec = MODELS[key]
        tf_out = np.load(workdir / f"{key}.tensorflow.npz")
        torch_out = np.load(workdir / f"{key}.torch.npz")
        has_keras = spec["keras_app"] is not None
        expected_litert = dict(tf_out, timm=torch_out["timm"],
                               timm_same_input=torch_out["timm_same_input"])
        for precision, suffix in (("float32", ".tflite"), ("int8", ".int8.tflite")):
            files = {"keras_tf": workdir / f"{key}.keras_tf{suffix}"} if has_keras else {}
            files["ours_tf"] = workdir / f"{key}.ours_tf{suffix}"
            # litert-torch's, where it ran
            files.update(timm=workdir / f"{key}.timm{suffix}",
                         timm_same_input=workdir / f"{key}.timm_same_input{suffix}")
            files = {n: p for n, p in files.items() if p.exists()}
            if "ours_tf" not in files:
                continue
            for threads in (1, 2):
                x = tf_out["x"]
                runners = {name: litert_runner(path, threads, x.shape) for name, path in files.items()}
                diffs = {name: float(np.abs(run(x) - expected_litert[name]).max())
                         for name, run in runners.items()}
                log(f"litert {key} {precision} {threads} thread(s)")
                per_call = time_files(runners, x, rounds)
                results.append(dict(
                    runtime="litert", model=key, precision=precision, threads=threads, batch=1,
                    ms={n: statistics.median(v) for n, v in per_call.items()},
                    ratios={f"ours_tf/{ref}": ratio(per_call, "ours_tf", ref)
                            for ref in ("keras_tf", "timm", "timm_same_input") if ref in files},
                    max_abs_diff=diffs,
                    ops={n: tflite_ops(p) for n, p in files.items()} if threads == 1 else {}))
        files = {"keras_tf": workdir / f"{key}.keras_tf.onnx"} if has_keras else {}
        files.update(ours_tf=workdir / f"{key}.ours_tf.onnx", timm=workdir / f"{key}.timm.onnx",
                     timm_same_input=workdir / f"{key}.timm_same_input.onnx",
                     ours_torch=workdir / f"{key}.ours_torch.onnx",
                     ours_torch_keras=workdir / f"{key}.ours_torch_keras.onnx",
                     ours_torch_raw=workdir / f"{key}.ours_torch_raw.onnx")
        files = {n: p for n, p in files.items() if p.exists()}
        expected = {"keras_tf": tf_out.get("keras_tf"), "ours_tf": tf_out["ours_tf"],
                    "timm": torch_out["timm"], "ours_torch": torch_out["ours_torch"],
                    "timm_same_input": torch_out.get("timm_same_input"),
                    "ours_torch_keras": torch_out.get("ours_torch_keras"),
                    "ours_torch_raw": torch_out.get("ours_torch_raw")}
        for batch in (1, 32):
            x = np.repeat(tf_out["x"], batch, axis=0)
            optimized = {n: workdir / f"{p.stem}.ort.onnx" for n, p in files.items()}
            runners = {n: onnx_runner(p, 1, x.shape, optimized[n] if batch == 1 else None)
                       for n, p in files.items()}
            source = {"keras_tf": tf_out, "ours_tf": tf_out, "timm": torch_out,
                      "timm_same_input": torch_out, "ours_torch": torch_out,
                      "ours_torch_keras": torch_out, "ours_torch_raw": torch_out}
            x_key = {"ours_torch_raw": "x_raw"}  # normalised images; the others take x
            diffs = {n: float(np.abs(run(np.repeat(source[n][x_key.get(n, "x")], batch, axis=0))[:1]
                                     - expected[n]).max()) for n, run in runners.items()}
            log(f"onnx {key} batch {batch}")
            per_call = time_files(runners, x, rounds)
            pairs = {"ours_torch/timm": ("ours_torch", "timm"),
                     "ours_tf/timm": ("ours_tf", "timm"),
                     "ours_tf/keras_tf": ("ours_tf", "keras_tf"),
                     "ours_torch_keras/keras_tf": ("ours_torch_keras", "keras_tf"),
                     "ours_torch/timm_same_input": ("ours_torch", "timm_same_input"),
                     "ours_tf/timm_same_input": ("ours_tf", "timm_same_input"),
                     "ours_torch_raw/timm": ("ours_torch_raw", "timm")}
            ratios = {k: ratio(per_call, a, b) for k, (a, b) in pairs.items()
                      if a in per_call and b in per_call}
            results.append(dict(
                runtime="onnx", model=key, precision="float32", threads=1, batch=batch,
                ms={n: statistics.median(v) for n, v in per_call.items()}, ratios=ratios,
                max_abs_diff=diffs,
                ops={n: onnx_ops(p) for n, p in optimized.items()} if batch == 1 else {}))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated keys of benchmarks/common.py MODELS "
                             f"(default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", default="/tmp/export_latency",
                        help="where the exported files go (reused with --skip-export)")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--out", help="markdown report (and a .json beside it)")
    parser.add_argument("--litert-torch-python", metavar="PYTHON",
                        help="an interpreter that imports litert-torch, timm and this torch "
                             "(a venv made with --system-site-packages and `pip install "
                             "litert-torch`): converts timm's models to .tflite as well")
    parser.add_argument("--phase", choices=["export-tensorflow", "export-torch",
                                            "export-litert-torch"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.phase == "export-tensorflow":
        return export_tensorflow(keys, workdir)
    if args.phase == "export-torch":
        return export_torch(keys, workdir)
    if args.phase == "export-litert-torch":
        return export_litert_torch(keys, workdir)
    if not args.skip_export:
        for backend in ("tensorflow", "torch"):
            env = dict(os.environ, KERAS_BACKEND=backend)
            subprocess.run([sys.executable, __file__, "--phase", f"export-{backend}",
                            "--models", args.models, "--workdir", str(workdir)],
                           env=env, check=True)
        if args.litert_torch_python:
            subprocess.run([args.litert_torch_python, __file__, "--phase", "export-litert-torch",
                            "--models", args.models, "--workdir", str(workdir)], check=True)
    results = measure(keys, workdir, args.rounds)
    command = "python benchmarks/export_latency.py " + shlex.join(argv or sys.argv[1:])
    text = render(results, command.strip())
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
