"""LiteRT export from the frozen inference function (TensorFlow backend).

Keras' LiteRT export writes the model as a SavedModel with its variables
(`ExportArchive`: the forward traced three times, a save and a restore
function traced for the checkpoint) and the converter loads it back twice
before freezing the variables into constants: most of the export's time goes
to SavedModel machinery the `.tflite` file never holds. Here the forward is
traced once and its variables frozen into constants (what the converter does
anyway); only that constant graph goes through a SavedModel to the
converter, so the file keeps Keras' signature (`serving_default`, inputs
named as the model's, outputs `output_0`...) and the same operators.
`tests/test_export.py` checks the signature and each file's outputs against
the Keras model; timings in `docs/deployment.md`."""

import contextlib
import logging
import os
import tempfile

# Ops that LiteRT's XNNPACK delegate runs in float only (its TFLite visitors
# check for float tensors): left int8, each runs in LiteRT's own kernel and
# cuts the delegated graph (`_int8_settings`).
XNNPACK_FLOAT_OPS = ("HARD_SWISH", "BATCH_MATMUL", "SOFTMAX")


class _NoGradientWarning(logging.Filter):
    """Drops the loader's warning that the constant graph's custom-gradient
    ops (hard-swish and GELU keep only their inputs for training) have no
    saved gradient: a `.tflite` file holds no gradients. A filter: the
    logger's level was reset on the way (seen with `setLevel`)."""

    def filter(self, record):
        return "unsaved custom gradients" not in str(record.msg)


@contextlib.contextmanager
def _quiet_absl_warnings():
    logger = logging.getLogger("absl")
    quiet = _NoGradientWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def frozen_litert_bytes(model, input_signature, kwargs):
    """The `.tflite` bytes of `model(inputs, training=False)`.

    Args:
        model: a built Keras model on the TensorFlow backend.
        input_signature: a list of `tf.TensorSpec` (structures allowed), one
            per positional input, as `keras.Model.export` takes it.
        kwargs: converter settings, as for Keras' LiteRT export
            (`target_spec={"supported_ops": ...}`, `optimizations`,
            `representative_dataset`, `inference_input_type`...), and
            `float_ops`: LiteRT op names an int8 conversion leaves in float
            (default: `XNNPACK_FLOAT_OPS` where allowed, see `_int8_settings`; `()`
            quantizes every op).
    """
    import tensorflow as tf
    from keras.src.export.litert import LiteRTExporter
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    kwargs = dict(kwargs)
    float_ops = kwargs.pop("float_ops", None)  # ours, not a converter setting

    def forward(*inputs):
        return model(*inputs, training=False)

    concrete = tf.function(forward, input_signature=input_signature,
                           autograph=False).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def serve(*inputs):
        flat = frozen(*tf.nest.flatten(inputs))
        return tf.nest.pack_sequence_as(structure, tf.nest.flatten(flat))

    module = tf.Module()
    module.serve = tf.function(serve, input_signature=input_signature, autograph=False)
    with tempfile.TemporaryDirectory() as saved_model, _quiet_absl_warnings():
        tf.saved_model.save(
            module, saved_model,
            signatures={"serving_default": module.serve.get_concrete_function()},
            # No gradients in a .tflite file; saving them fails on the
            # constant graph's custom-gradient ops.
            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        # Keras' defaults, then the caller's settings, with Keras' own checks.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        LiteRTExporter(model, input_signature, **kwargs)._apply_converter_kwargs(converter)
        quantizing, io_type, allows_float = _int8_settings(converter)
        eligible = quantizing and allows_float and io_type is not None
        if float_ops is None:
            float_ops = XNNPACK_FLOAT_OPS if eligible else ()
        elif float_ops and not eligible:
            raise ValueError(
                f"float_ops={list(float_ops)} leaves ops in float in an int8 conversion: it "
                "needs `optimizations` and a `representative_dataset`, `TFLITE_BUILTINS` among "
                "`target_spec.supported_ops`, and `inference_input_type` and "
                "`inference_output_type` both float32 or both int8 (got: quantizing "
                f"{quantizing}, float builtins {allows_float}, input and output "
                f"{io_type or 'mixed or other'}). Pass float_ops=() for a fully int8 file.")
        if not float_ops:
            return converter.convert()
        # Selective quantization through TensorFlow's quantization debugger
        # (its public route to the quantizer's denylist): calibrate, then
        # quantize every op but `float_ops`.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=converter.representative_dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(float_ops), fully_quantize=io_type == "int8"))
        return debugger.get_nondebug_quantized_model()


def _int8_settings(converter):
    """(quantizing, "float32" / "int8" for input and output alike or None,
    float builtins allowed).

    By default an int8 conversion that may keep float builtins, with float32
    or int8 input and output, leaves `XNNPACK_FLOAT_OPS` in float. XNNPACK,
    LiteRT's CPU delegate, runs them in float only: an int8 one runs in
    LiteRT's own kernel and cuts the delegated graph at each of them (V3
    small's HARD_SWISH: 21 delegated parts, slower than the float32 file; V4
    hybrids' attention matmuls and softmax: 10; timings in
    docs/deployment.md). Kept float between a DEQUANTIZE and a QUANTIZE, the
    whole graph is delegated. Integer-only targets (`supported_ops` of
    `TFLITE_BUILTINS_INT8` alone, for NPUs) keep the converter's full-integer
    quantization."""
    import tensorflow as tf

    types = {t or tf.float32 for t in (converter.inference_input_type,
                                       converter.inference_output_type)}
    io_type = {tf.float32: "float32", tf.int8: "int8"}.get(types.pop()) if len(types) == 1 else None
    quantizing = bool(converter.optimizations) and converter.representative_dataset is not None
    allows_float = tf.lite.OpsSet.TFLITE_BUILTINS in set(converter.target_spec.supported_ops)
    return quantizing, io_type, allows_float


def export_litert(model, filepath, input_signature=None, verbose=None, **kwargs):
    """`keras.Model.export(filepath, format="litert", ...)` on TensorFlow,
    through the frozen graph (module docstring); same arguments and file."""
    from keras import tree
    from keras.src.export.export_utils import get_input_signature, make_tf_tensor_spec
    from keras.src.utils import io_utils

    filepath = str(filepath)
    if not filepath.endswith(".tflite"):
        raise ValueError(
            f"The LiteRT export requires the filepath to end with '.tflite'. Got: {filepath}")
    if input_signature is None:
        input_signature = get_input_signature(model)
    if not isinstance(input_signature, (list, tuple)):
        input_signature = [input_signature]
    # Keras InputSpecs or TensorSpecs, as ExportArchive takes them.
    specs = tree.map_structure(make_tf_tensor_spec, list(input_signature))
    data = frozen_litert_bytes(model, specs, kwargs)
    # Written beside the target and renamed: an interrupted export never
    # leaves a truncated .tflite behind.
    folder = os.path.dirname(os.path.abspath(filepath))
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as f:
        try:
            f.write(data)
        except BaseException:
            f.close()
            os.remove(f.name)
            raise
    os.replace(f.name, filepath)
    if verbose is None or verbose:
        io_utils.print_msg(f"Saved artifact at '{filepath}'.")
    return filepath
