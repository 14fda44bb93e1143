"""The examples and documented snippets as a new user runs them."""

import os
import re

import keras
import numpy as np
import pytest
from conftest import load_example

from keras_mobilenets import create_mobilenetv4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()


def test_transfer_learning_weights_none_means_random_init():
    example = load_example("transfer_learning")
    for text in ("None", "none"):
        assert example.parse_args(["--weights", text]).weights is None
    assert example.parse_args(["--weights", "imagenet"]).weights == "imagenet"


@pytest.mark.skipif(BACKEND != "torch", reason="backend-neutral, run once (torch): the example "
                    "builds its model with Keras layers; its training runs in test_features.py")
def test_transfer_learning_feeds_v4_weights_imagenet_mean_std(tmp_path):
    """A V4 (timm) backbone gets (x / 255 - ImageNet mean) / std, not [-1, 1]."""
    example = load_example("transfer_learning")
    path = str(tmp_path / "v4_backbone.weights.h5")
    create_mobilenetv4("conv_small", include_top=False, pooling="avg",
                       input_shape=(32, 32, 3)).save_weights(path)
    args = example.parse_args(["--model", "v4_conv_small", "--weights", path])
    model = example.build(args, num_classes=10)
    normalize = model.layers[1]
    assert isinstance(normalize, keras.layers.Rescaling)
    x = np.full((1, 32, 32, 3), 127.5, "float32")
    got = keras.ops.convert_to_numpy(normalize(x))[0, 0, 0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(got, (0.5 - mean) / std, rtol=1e-5)
    # From scratch, the inputs stay in [-1, 1].
    scratch = example.build(example.parse_args(["--model", "v4_conv_small"]), num_classes=10)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scratch.layers[1](x)), 0.0, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="int8 LiteRT conversion needs TensorFlow")
def test_deployment_int8_snippet_has_int8_input_and_output(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "docs", "deployment.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                 if "inference_input_type" in b)
    # Offline and small: random weights at 32 px instead of ImageNet at 224.
    assert 'create_mobilenetv3("small", weights="imagenet")' in block
    block = block.replace('weights="imagenet"', 'weights=None, input_shape=(32, 32, 3)')
    block = block.replace("(8, 224, 224, 3)", "(8, 32, 32, 3)")
    # The float LiteRT, SavedModel and ONNX exports are the calls
    # test_export.py makes on V3 small and runs in their runtimes; not
    # repeated here (suite time).
    for line in ('model.export("v3_small.tflite", format="litert",\n'
                 '             target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})\n',
                 'model.export("v3_small_savedmodel", format="tf_saved_model")\n',
                 'model.export("v3_small.onnx", format="onnx")'):
        assert line in block, line
        block = block.replace(line, "")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "docs/deployment.md int8", "exec"), namespace)
    assert namespace["inp"]["dtype"] == np.int8 and namespace["out"]["dtype"] == np.int8
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (1, 1000)
    # Dequantized, the int8 probabilities are the float model's to a few steps.
    expected = namespace["model"].predict(namespace["image"], verbose=0)
    step = namespace["scale"]
    assert 0 < step <= 1 / 128
    assert np.max(np.abs(probabilities - expected)) <= 3 * step
