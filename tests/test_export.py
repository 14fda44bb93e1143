"""Deployment: exported artifacts run in their own runtimes and match Keras.

* `model.export` to LiteRT and TF SavedModel (TensorFlow backend) and ONNX
  (every backend), each artifact run in its runtime (ai_edge_litert,
  tf.saved_model.load, onnxruntime) and compared with the Keras logits.
* Post-training int8 LiteRT with builtin ops only, its size and its top-1
  agreement with the float model.
* A `.keras` file saved on this backend loads on the next one (TensorFlow -> JAX
  -> torch -> TensorFlow) with the same outputs.

Every combination of backend and format is generated only where Keras 3
supports it (`EXPORT_FORMATS`); only the runtimes are optional.

About the weights. The obvious recipe, random BatchNorm moving statistics
(mean random, variance in [0.5, 1.5]) on the random initialisation, makes
the logits *independent of the input* (their spread across images is < 1e-4 of their size on all six
models tried): the activations shrink layer after layer until only the BatchNorm
offsets are left, so a converter that broke the early layers would still
pass. `prepare_model` instead gives every BatchNorm random gamma/beta
(gamma in [0.5, 1.5], beta ~ N(0, 0.2)), sets the moving statistics from
data (one training-mode pass with momentum 0 on 16 other images), floors
each layer's variances at their median (near-zero variances would amplify
float32 rounding: 3e-4 to 4e-4 between correct runtimes on V4 hybrid_medium), raises
the LayerScale gammas from 1e-5 to U(0.1, 0.5) so that the attention and UIB
branches count, and centres the classifier bias so that the top-1 class
depends on the image. `prepared` checks that the logits vary across the
test images by at least 50x the export tolerance.
"""

import os
import textwrap

import keras
import numpy as np
import pytest
from background import finish, start, subprocess_env
from conftest import BACKEND, load_example, max_abs_diff, to_numpy
from tflite_graph import assert_builtin_only, first_ops_constant_shapes, litert_ops

from keras_mobilenets.weights.assign import leaf_layers
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4

SIZE = 64  # small inputs keep the suite fast; every model (V4 hybrids too) handles them
SHAPE = (SIZE, SIZE, 3)
NUM_CLASSES = 10
BATCH = 4
FLOAT_TOL = 1e-4  # max abs difference of the logits, exported vs Keras
KERAS_FILE_TOL = 1e-5  # max abs difference of the logits, .keras across backends
# The logits must depend on the input: their std across the batch, relative to
# their overall std, and in absolute terms (50x the export tolerance).
MIN_SENSITIVITY = 0.1
MIN_SPREAD = 50 * FLOAT_TOL

# name -> (factory, variant, input range). V3 keeps its built-in Rescaling
# layer, so it takes [0, 255] pixels; the others take [-1, 1].
MODELS = {
    "v3_small": (create_mobilenetv3, "small", 255.0),
    "v4_conv_small": (create_mobilenetv4, "conv_small", 1.0),
    "v4_hybrid_medium": (create_mobilenetv4, "hybrid_medium", 1.0),
}


def build(name):
    factory, variant, _ = MODELS[name]
    return factory(variant, input_shape=SHAPE, num_classes=NUM_CLASSES, classifier_activation=None)


# What `model.export` supports (measured with Keras 3.15.1, TensorFlow 2.21,
# JAX 0.10, torch 2.14 and the runtimes of the `test` extra). Not generated: "tf_saved_model" from
# torch (torch.export dynamic-shape failure), "litert" from JAX (refused by
# Keras) and from torch (needs litert-torch, which pins typing_extensions
# 4.12.2 and fixes the batch size at 1). "tf_saved_model" from JAX works
# (through jax2tf; 3e-6 on V4 hybrid_medium) but costs ~30 s per model here,
# so the JAX run covers ONNX only.
EXPORT_FORMATS = {
    "tensorflow": ("litert", "tf_saved_model", "onnx"),
    "jax": ("onnx",),
    "torch": ("onnx",),
}[BACKEND]
EXTENSIONS = {"litert": ".tflite", "tf_saved_model": "", "onnx": ".onnx"}


# Each route converts the MODELS, which together hold every block type (plain
# and depthwise convolutions, inverted residuals, SE and hard-swish, UIB,
# attention): a conversion costs 4-25 s per model here. V1, V2 and V3 large
# add no op of their own; benchmarks/export_latency.py exports and checks all
# seven. LiteRT (written from the frozen forward, `layers/litert_export.py`)
# and torch's ONNX convert all three. tf2onnx and jax2onnx (15-44 s per model
# in the suite) and the SavedModel (Keras' ExportArchive, with variables; V4
# hybrid_medium's took 31 s) convert V3 small, whose SE gates, hard-swish and
# depthwise convolutions are what those converters write their own way (test
# below); the attention's MatMul, Softmax and Reshape are generic ops (suite
# time: 76 s of the TensorFlow and JAX runs).
SUBSETS = {("jax", "onnx"): ("v3_small",), ("tensorflow", "onnx"): ("v3_small",),
           ("tensorflow", "tf_saved_model"): ("v3_small",)}


def export_cases():
    for fmt in EXPORT_FORMATS:
        for name in SUBSETS.get((BACKEND, fmt), MODELS):
            yield pytest.param(name, fmt, id=f"{BACKEND}-{fmt}-{name}")


# The example script's helpers serve the tests too: `forward` (jit-compiled on
# JAX) and the BatchNorm calibration.
EXAMPLE = load_example("export")
forward = EXAMPLE.forward


def images(batch, seed, scale=1.0):
    """Smooth random images (coarse noise upsampled 8x, plus fine noise) in
    [-1, 1], or [0, 255] for `scale=255`: unlike i.i.d. pixel noise, they still
    differ from each other after global pooling."""
    return EXAMPLE.sample_images(batch, SIZE, scale, seed)


def prepare_model(model, scale, seed=0):
    """Random BN affine and LayerScale, BN statistics from data (see module doc)."""
    assert any(isinstance(layer, keras.layers.BatchNormalization) for _, layer in leaf_layers(model))
    EXAMPLE.calibrate_batchnorm(model, images(16, seed + 1000, scale), seed)
    return model


_PREPARED = {}


def prepared(name):
    """`(model, inputs, keras_logits)`, built and prepared once per module."""
    if name not in _PREPARED:
        scale = MODELS[name][2]
        keras.utils.set_random_seed(0)
        model = prepare_model(build(name), scale)
        x = images(BATCH, 1, scale)
        logits = forward(model, x)
        spread = float(np.mean(np.std(logits, axis=0)))
        assert spread / float(np.std(logits)) > MIN_SENSITIVITY, (name, spread, np.std(logits))
        assert spread > MIN_SPREAD, (name, spread)
        _PREPARED[name] = (model, x, logits)
    return _PREPARED[name]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Export each (model, format) once per module; returns a function giving its path."""
    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name, fmt):
        if (name, fmt) not in cache:
            model = prepared(name)[0]
            path = str(root / f"{name}{EXTENSIONS[fmt]}")
            kwargs = {}
            if fmt == "litert":
                import tensorflow as tf

                # Keras allows SELECT_TF_OPS (Flex) by default; deployment wants
                # builtins only, so the conversion itself fails on any other op.
                kwargs["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
            model.export(path, format=fmt, verbose=False, **kwargs)
            cache[name, fmt] = path
        return cache[name, fmt]

    return get


# --- runtimes ---------------------------------------------------------------


def run_litert(path, x):
    pytest.importorskip("ai_edge_litert.interpreter")
    return EXAMPLE.run("litert", path, x)


def run_onnx(path, x):
    pytest.importorskip("onnxruntime")
    return EXAMPLE.run("onnx", path, x)


def run_saved_model(path, x):
    return EXAMPLE.run("tf_saved_model", path, x)


RUNTIMES = {"litert": run_litert, "onnx": run_onnx, "tf_saved_model": run_saved_model}



# --- 1. float export ----------------------------------------------------------


@pytest.mark.parametrize("name, fmt", export_cases())
def test_export_matches_keras(name, fmt, artifacts, record_property):
    _, x, expected = prepared(name)
    got = RUNTIMES[fmt](artifacts(name, fmt), x)
    diff = max_abs_diff(got, expected)
    record_property("max_abs_diff", diff)
    print(
        f"\n{BACKEND} {fmt} {name}: max abs diff {diff:.3g} (|logits| <= {np.abs(expected).max():.3g})"
    )
    assert got.shape == expected.shape
    assert diff <= FLOAT_TOL


if "litert" in EXPORT_FORMATS:

    @pytest.mark.parametrize("name", list(MODELS))
    def test_float_litert_has_builtin_ops_only(name, artifacts):
        resolved, _ = assert_builtin_only(artifacts(name, "litert"))
        print(f"\nfloat LiteRT {name}: {resolved}")
        if name.startswith("v3"):
            assert "HARD_SWISH" in resolved  # not decomposed, not Flex
            # The built-in rescaling multiplies and adds scalars: XNNPACK ran a
            # 3-vector broadcast over the image as one short row per pixel
            # (0.39 ms of V3 small's 1.39 ms at 224 px on one thread).
            mul, add = first_ops_constant_shapes(artifacts(name, "litert"), ("MUL", "ADD"))
            assert mul == add == [()], (mul, add)
        if name == "v4_hybrid_medium":
            assert {"BATCH_MATMUL", "SOFTMAX"} <= set(resolved)  # Mobile MQA
            # constant reshape targets: XNNPACK runs no SHAPE / PACK, which cut its graph
            assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(resolved), resolved

    def test_litert_file_has_keras_signature_and_bad_settings_write_nothing(artifacts, tmp_path):
        # `model.export` writes LiteRT from the frozen forward
        # (`layers/litert_export.py`); the file keeps what Keras' own export
        # writes (seen with `keras.Model.export`): one `serving_default`
        # signature, the model's input name, `output_0`, a dynamic batch.
        _, _, interpreter = litert_ops(artifacts("v3_small", "litert"))
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["input"], "outputs": ["output_0"]}}
        (inp,) = interpreter.get_input_details()
        assert list(inp["shape_signature"]) == [-1, *SHAPE]
        model = prepared("v3_small")[0]
        path = tmp_path / "bad.tflite"
        with pytest.raises(ValueError, match="Unknown converter attribute 'optimisations'"):
            model.export(str(path), format="litert", optimisations=[])
        with pytest.raises(ValueError, match="end with '.tflite'"):
            model.export(str(tmp_path / "model.lite"), format="litert")
        assert os.listdir(tmp_path) == []


if BACKEND == "torch":

    # V4 pads symmetrically (timm): that padding must be the Conv's own
    # `pads`, not a Pad node, which onnxruntime neither fuses nor runs in its
    # blocked layout (5 Pads took 0.17 of V3 small's 1.81 ms and doubled the
    # layout reorders; benchmarks/README.md, exported models).
    @pytest.mark.parametrize("name", ["v4_conv_small", "v4_hybrid_medium"])
    def test_torch_onnx_pads_inside_the_convolutions(name, artifacts):
        onnx = pytest.importorskip("onnx")
        graph = onnx.load(artifacts(name, "onnx")).graph
        ops = [node.op_type for node in graph.node]
        padded = [node for node in graph.node if node.op_type == "Conv"
                  and any(a.name == "pads" and any(a.ints) for a in node.attribute)]
        assert "Pad" not in ops, sorted(set(ops))
        assert padded  # the stride-2 and stride-1 k > 1 convolutions

    # V3 here pads as keras.applications does (TensorFlow SAME, the odd pixel at the
    # bottom and right at stride 2), which torch's convolution cannot: a Pad node. With
    # the input's height and width fixed its amounts are constants, not arithmetic on
    # the input's shape, and onnxruntime folds it into the convolution (`fusable_pads`;
    # V3 small at 224 px from torch: 0.77x the time of the export with the arithmetic).
    def test_torch_onnx_same_padding_folds_into_the_convolutions(artifacts, tmp_path):
        onnx = pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
        from test_export_graph import optimized_ops

        model = onnx.load(artifacts("v3_small", "onnx"))
        ops = [node.op_type for node in model.graph.node]
        assert "Pad" in ops and "Shape" not in ops and "Sub" not in ops, sorted(set(ops))
        optimized = optimized_ops(model, tmp_path)
        assert "Pad" not in optimized, sorted(set(optimized))

    # With free sizes the pad amounts must stay arithmetic on the input's shape: at
    # stride 2 the odd pixel's side depends on the size's parity.
    @pytest.mark.parametrize("name", list(MODELS))
    def test_torch_onnx_with_free_sizes_pads_each_size_as_keras(name, tmp_path):
        ort = pytest.importorskip("onnxruntime")
        model, x, _ = prepared(name)
        factory, variant, _ = MODELS[name]
        free = factory(variant, input_shape=(None, None, 3), num_classes=NUM_CLASSES,
                       classifier_activation=None)
        free.set_weights(model.get_weights())
        free(x[:1])  # Keras exports called models
        path = str(tmp_path / "free.onnx")
        free.export(path, format="onnx", verbose=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for size in (SIZE, SIZE - 1):
            crop = x[:, :size, :size]
            expected = forward(free, crop)
            got = session.run(None, {session.get_inputs()[0].name: crop})[0]
            assert max_abs_diff(got, expected) <= FLOAT_TOL, size
            assert np.abs(expected).max() > 50 * FLOAT_TOL


if BACKEND == "jax":

    # jax2onnx needs every convolution's padding as numbers; TensorFlow SAME padding
    # depends on the size, so with free sizes JAX failed deep inside jax2onnx with
    # "Symbolic dimension ... used in a context that requires a constant".
    def test_jax_onnx_with_free_sizes_and_same_padding_says_what_to_do(tmp_path):
        from mobilenet_v1 import create_mobilenetv1

        free = create_mobilenetv1("0.25", input_shape=(None, None, 3), num_classes=NUM_CLASSES)
        free(images(1, 0))
        with pytest.raises(ValueError, match=r"free input sizes \[\(None, None, None, 3\)\].*"
                                             r"input_shape=\(224, 224, 3\).*TensorFlow or torch"):
            free.export(str(tmp_path / "free.onnx"), format="onnx", verbose=False)
        assert os.listdir(tmp_path) == []


# tf2onnx writes hard-swish as Add, Clip, Mul, Mul and hard-sigmoid as three
# nodes, which onnxruntime runs one by one (V3 from TensorFlow ran 1.2-1.4x
# slower than the same weights from torch); on JAX the depthwise convolutions
# run as shifted sums by default, which jax2onnx would write as ~9x the nodes;
# both exporters write global average pooling as ReduceMean.
# `model.export` writes one node for each.
def test_onnx_activations_and_depthwise_convolutions_are_single_nodes(artifacts):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(artifacts("v3_small", "onnx"), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    # V3 small: 19 hard-swish, 9 SE gates (the head's hard-swish follows a Dense)
    assert ops.count("HardSwish") >= 19 and ops.count("HardSigmoid") >= 9, sorted(set(ops))
    assert "Clip" not in ops and "Min" not in ops, sorted(set(ops))
    depthwise = [node for node in graph.node if node.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in node.attribute)]
    assert len(depthwise) == 11, len(depthwise)  # one per block
    # the shifted sums would be one Slice per tap: >= 99 (torch's export has 5 of its own)
    assert ops.count("Slice") <= 5, ops.count("Slice")
    # 9 SE gates and the head pool: GlobalAveragePool, which onnxruntime runs in its
    # blocked layout, not the ReduceMean the exporters write (V3 small from torch: ReduceMean
    # and the reorders around it 0.2 of 2.7 ms, timm's graph has GlobalAveragePool)
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 10, sorted(set(ops))
    # the Rescaling's multiply is in the stem's kernel (a Mul of constants, folded when
    # onnxruntime loads the file): one pass over the image less
    consumers = {}
    for node in graph.node:
        for name in node.input:
            if node.op_type != "Shape":  # reads no values
                consumers.setdefault(name, []).append(node)
    path, tensor = [], graph.input[0].name
    while len(consumers[tensor]) == 1 and consumers[tensor][0].op_type != "Conv":
        path.append(consumers[tensor][0].op_type)
        tensor = consumers[tensor][0].output[0]
    path = [op for op in path if op not in ("Cast", "Identity")]
    assert path in (["Add", "Transpose"], ["Add", "Transpose", "Pad"]), path  # Pad: SAME, torch


# --- 2. int8 LiteRT -----------------------------------------------------------

# V3 small's int8 conversion is checked on a trained model below (the digits
# example), with the same op checks.
INT8_MODELS = ("v4_conv_small",)
INT8_MIN_SIZE_RATIO = 3.0
INT8_CALIBRATION_IMAGES = 64
INT8_EVAL_IMAGES = 128
# Top-1 agreement of the int8 model with the float Keras model over 10
# classes, on 128 images other than the 64 calibration ones. With random
# weights the class margins are small and only partly input-driven, so int8
# noise flips more decisions than on a trained model: 0.77-0.87 measured here
# (with 1000 classes, 0.5-0.65). The bar is 0.7; always answering the most
# frequent class would score <= 0.3 (checked).
INT8_MIN_TOP1 = 0.7
INT8_MAX_MAJORITY = 0.3
QUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

if BACKEND == "tensorflow":

    def assert_int8_builtin_ops(path):
        """Builtin ops only, and the heavy ops really run in int8."""
        resolved, interpreter = assert_builtin_only(path)
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        heavy = [op for op in interpreter._get_ops_details() if op["op_name"] in QUANTIZED_OPS]
        assert heavy
        for op in heavy:
            dtypes = {tensors[i]["dtype"] for i in op["inputs"][:2] if i >= 0}
            assert dtypes == {np.int8}, (op["op_name"], dtypes)
        return resolved

    @pytest.mark.parametrize("name", INT8_MODELS)
    def test_int8_litert(name, artifacts, tmp_path):
        import tensorflow as tf

        model, _, _ = prepared(name)
        scale = MODELS[name][2]
        calibration = images(INT8_CALIBRATION_IMAGES, 2, scale)

        def representative_dataset():
            for i in range(len(calibration)):
                yield [calibration[i : i + 1]]

        # The user's call (docs/deployment.md): converter settings as keywords.
        path = str(tmp_path / f"{name}_int8.tflite")
        model.export(path, format="litert", verbose=False,
                     optimizations=[tf.lite.Optimize.DEFAULT],
                     representative_dataset=representative_dataset,
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]})

        resolved = assert_int8_builtin_ops(path)

        float_size = os.path.getsize(artifacts(name, "litert"))
        int8_size = os.path.getsize(path)
        ratio = float_size / int8_size
        x = images(INT8_EVAL_IMAGES, 3, scale)
        expected = to_numpy(model.predict(x, batch_size=16, verbose=0))
        got = run_litert(path, x)
        agreement = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
        counts = np.bincount(expected.argmax(-1), minlength=NUM_CLASSES)
        majority = float(counts.max() / counts.sum())
        print(
            f"\nint8 {name}: float {float_size / 1e6:.2f} MB, int8 {int8_size / 1e6:.2f} MB "
            f"({ratio:.2f}x), top-1 agreement {agreement:.3f} on {len(x)} images "
            f"(most frequent float top-1: {majority:.3f}), max abs diff "
            f"{max_abs_diff(got, expected):.3g} (logit spread {np.mean(np.std(expected, 0)):.3g}), "
            f"ops {resolved}"
        )
        assert majority <= INT8_MAX_MAJORITY  # agreement is not trivially high
        assert ratio >= INT8_MIN_SIZE_RATIO
        assert agreement >= INT8_MIN_TOP1

    def xnnpack_partitions(path):
        """DELEGATE nodes once LiteRT's default (XNNPACK) delegate took its part."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        interpreter.allocate_tensors()
        return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())

    def hard_swish_dtypes(path):
        _, interpreter = assert_builtin_only(path)
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        return {tensors[op["inputs"][0]]["dtype"] for op in interpreter._get_ops_details()
                if op["op_name"] == "HARD_SWISH"}

    def test_int8_litert_keeps_hard_swish_float_for_xnnpack(tmp_path):
        """XNNPACK runs HARD_SWISH in float only: int8 conversions that may keep
        float builtins leave it float (the whole graph one delegated part);
        integer-only settings still quantize it."""
        import tensorflow as tf

        model, _, _ = prepared("v3_small")
        calibration = images(16, 2, 255.0)
        paths = {}
        for name, ops in (("mixed", [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                     tf.lite.OpsSet.TFLITE_BUILTINS]),
                          ("integer", [tf.lite.OpsSet.TFLITE_BUILTINS_INT8])):
            paths[name] = str(tmp_path / f"{name}.tflite")
            model.export(paths[name], format="litert", verbose=False,
                         optimizations=[tf.lite.Optimize.DEFAULT],
                         representative_dataset=lambda: ([c[None]] for c in calibration),
                         target_spec={"supported_ops": ops})
        # int8 input and output too (docs/deployment.md's full-integer call, float builtins allowed)
        int8_io = str(tmp_path / "int8_io.tflite")
        model.export(int8_io, format="litert", verbose=False,
                     optimizations=[tf.lite.Optimize.DEFAULT],
                     representative_dataset=lambda: ([c[None]] for c in calibration),
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                    tf.lite.OpsSet.TFLITE_BUILTINS]},
                     inference_input_type=tf.int8, inference_output_type=tf.int8)
        _, io_interpreter = assert_builtin_only(int8_io)
        assert io_interpreter.get_input_details()[0]["dtype"] == np.int8
        assert io_interpreter.get_output_details()[0]["dtype"] == np.int8
        assert hard_swish_dtypes(int8_io) == {np.float32}
        assert xnnpack_partitions(int8_io) == 1
        assert hard_swish_dtypes(paths["mixed"]) == {np.float32}
        assert hard_swish_dtypes(paths["integer"]) == {np.int8}
        assert_int8_builtin_ops(paths["mixed"])  # convolutions still int8
        # integer-only: cut at each of V3 small's int8 HARD_SWISH ops (21 parts at 224x224)
        assert xnnpack_partitions(paths["mixed"]) == 1 < xnnpack_partitions(paths["integer"])
        x = images(INT8_EVAL_IMAGES, 3, 255.0)
        expected = to_numpy(model.predict(x, batch_size=16, verbose=0)).argmax(-1)
        for path in paths.values():
            assert np.mean(run_litert(path, x).argmax(-1) == expected) >= INT8_MIN_TOP1
        # float ops asked for where the file must be integer-only: a clear error, no file
        bad = tmp_path / "bad.tflite"
        with pytest.raises(ValueError, match=r"float_ops=\['HARD_SWISH'\].*float builtins False"):
            model.export(str(bad), format="litert", verbose=False, float_ops=("HARD_SWISH",),
                         optimizations=[tf.lite.Optimize.DEFAULT],
                         representative_dataset=lambda: ([c[None]] for c in calibration),
                         target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]})
        assert not bad.exists()

    # On a trained model (the example dataset, sklearn digits) the int8 model
    # must keep the float model's decisions: 1.000 (V3 small) and 0.997
    # (V4 conv_small) after 5 epochs in the dev run; after 2 epochs (V3 small,
    # seed 0) float 0.942, int8 0.931, agreement 0.989. Two epochs here, V3
    # small only (suite time; V4's int8 conversion is in test_int8_litert).
    DIGITS_MIN_TOP1 = 0.95
    DIGITS_MIN_ACCURACY = 0.8
    DIGITS_MIN_SIZE_RATIO = 2.5  # the 10-class head of the digits model shrinks less

    @pytest.mark.parametrize("name", ["v3_small"])
    def test_int8_on_example_dataset(name, tmp_path):
        module = load_example("int8_digits")
        result = module.main(["--model", name, "--epochs", "2", "--calibration-images", "64",
                              "--out", str(tmp_path)])
        assert result["validation_images"] == 360
        assert result["float_accuracy"] >= DIGITS_MIN_ACCURACY
        assert result["int8_accuracy"] >= DIGITS_MIN_ACCURACY
        assert result["top1_agreement"] >= DIGITS_MIN_TOP1
        assert result["float_bytes"] / result["int8_bytes"] >= DIGITS_MIN_SIZE_RATIO
        path = str(tmp_path / f"digits_{name}.int8.tflite")
        resolved = assert_int8_builtin_ops(path)
        assert "HARD_SWISH" in resolved
        assert hard_swish_dtypes(path) == {np.float32}  # litert_int8: float for XNNPACK


# --- 3. .keras across backends ------------------------------------------------

# The models this backend's run prepares anyway: on JAX only V3 small (its
# ONNX export; V4 hybrid_medium's preparation took 20 s there), elsewhere V3
# small and V4 hybrid_medium, so that files written on TensorFlow and torch
# carry attention, LayerScale and UIB weights to JAX and TensorFlow.
KERAS_FILE_MODELS = ("v3_small",) if BACKEND == "jax" else ("v3_small", "v4_hybrid_medium")
LOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import keras
    import numpy as np
    import keras_mobilenets  # registers the custom layers

    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
    folder = sys.argv[2]
    for name in sys.argv[3:]:
        model = keras.saving.load_model(os.path.join(folder, name + ".keras"))
        x = np.load(os.path.join(folder, name + ".x.npy"))
        out = keras.ops.convert_to_numpy(model.predict_on_batch(x))  # compiled
        np.save(os.path.join(folder, name + "." + keras.backend.backend() + ".npy"), out)
    """
)


@pytest.fixture(scope="module")
def keras_file_jobs(tmp_path_factory):
    """Save the .keras files on this backend and start loading them on the
    next backend of the cycle TensorFlow -> JAX -> torch -> TensorFlow, in the
    background; yields `(folder, {backend: process})`. Over the three runs
    every backend saves once and loads once (a load is a process of its own,
    10-20 s of CPU beside the suite)."""
    folder = tmp_path_factory.mktemp("keras_files")
    for name in KERAS_FILE_MODELS:
        model, x, _ = prepared(name)
        model.save(str(folder / f"{name}.keras"))
        np.save(folder / f"{name}.x.npy", x)
    cycle = ("tensorflow", "jax", "torch")
    others = [cycle[(cycle.index(BACKEND) + 1) % 3]]
    procs = {
        b: start(LOAD_SCRIPT, [str(folder), *KERAS_FILE_MODELS], subprocess_env(b)) for b in others
    }
    yield folder, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_keras_file_loads_on_the_next_backend(keras_file_jobs):
    folder, procs = keras_file_jobs
    for backend, proc in procs.items():
        finish(proc, f"loading on {backend}")
    for name in KERAS_FILE_MODELS:
        expected = prepared(name)[2]
        for backend in procs:
            got = np.load(folder / f"{name}.{backend}.npy")
            diff = max_abs_diff(got, expected)
            print(f"\n.keras {BACKEND} -> {backend} {name}: max abs diff {diff:.3g}")
            assert diff <= KERAS_FILE_TOL


@pytest.fixture(scope="module", autouse=True)
def start_subprocesses_first(request):
    """Start the subprocess jobs of the selected tests before everything else,
    so that they overlap with the exports, which mostly keep one core busy."""
    selected = {
        getattr(item, "originalname", None)
        for item in request.session.items
        if item.module is request.module
    }
    if "test_keras_file_loads_on_the_next_backend" in selected:
        request.getfixturevalue("keras_file_jobs")
    yield
    _PREPARED.clear()  # free the models once the module is done


# --- the example script ---------------------------------------------------------


@pytest.mark.skipif(BACKEND != "torch", reason="backend-neutral, run once (torch): each backend's "
                    "export of V3 small to ONNX is test_export_matches_keras above")
def test_example_script_exports_and_verifies(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    example = EXAMPLE
    results = example.main(
        ["--model", "v3_small", "--size", "64", "--format", "onnx", "--out", str(tmp_path)]
    )
    (result,) = results
    assert result["format"] == "onnx" and os.path.isfile(result["path"])
    assert result["max_abs_diff"] <= FLOAT_TOL
    assert "onnx" in capsys.readouterr().out
