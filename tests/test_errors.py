"""Arguments a user gets wrong give a ValueError/TypeError that names the bad
value and what is accepted, raised before any layer is built."""

import contextlib
import re

import keras
import numpy as np
import pytest

from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4

FACTORIES = {
    "v1": (create_mobilenetv1, "1.0", ["0.25", "0.5", "0.50", "0.75", "1.0"]),
    "v2": (create_mobilenetv2, "1.0", ["0.35", "0.5", "1.3", "1.4"]),
    "v3": (create_mobilenetv3, "small", ["large", "small"]),
    "v4": (create_mobilenetv4, "conv_small", ["conv_small", "conv_medium", "hybrid_large"]),
}
IDS = list(FACTORIES)

# (kwargs, exception type, words the message must contain)
BAD_ARGUMENTS = [
    (dict(width_multiplier=0), ValueError, ["width_multiplier", "0", "> 0"]),
    (dict(width_multiplier=-0.5), ValueError, ["width_multiplier", "-0.5"]),
    (dict(width_multiplier="wide"), TypeError, ["width_multiplier", "'wide'", "positive number"]),
    (dict(num_classes=0), ValueError, ["num_classes", "0", "positive integer"]),
    (dict(num_classes=2.5), ValueError, ["num_classes", "2.5"]),
    (dict(input_shape=(224, 224)), ValueError, ["input_shape", "(224, 224)", "(height, width, channels)"]),
    (dict(input_shape=(16, 16, 3)), ValueError, ["16", ">= 32"]),
    (dict(input_shape=(224, 31, 3)), ValueError, ["width", "31", ">= 32"]),
    (dict(input_shape=(64, 64, 0)), ValueError, ["channels", "0"]),
    (dict(input_shape=(224, 224, 1), weights="imagenet"), ValueError, ["3 input channels", "1 channels"]),
    (dict(include_top=False, pooling="mean"), ValueError, ["pooling", "'mean'", "'avg'", "'max'"]),
    (dict(classifier_activation="softmaxx"), ValueError, ["classifier_activation", "'softmaxx'"]),
    (dict(dropout_rate=1.0), ValueError, ["dropout_rate", "1.0", "[0, 1)"]),
    (dict(dropout_rate=-0.1), ValueError, ["dropout_rate", "-0.1"]),
    (dict(style="caffe"), ValueError, ["style", "'caffe'", "'keras'", "'timm'"]),
]


@pytest.mark.parametrize("version", IDS)
def test_unknown_variant_lists_valid_ones(version):
    factory, _, valid = FACTORIES[version]
    with pytest.raises(ValueError) as info:
        factory(variant="giant")
    message = str(info.value)
    assert "'giant'" in message
    for name in valid:
        assert f"'{name}'" in message


@pytest.mark.parametrize("version", IDS)
@pytest.mark.parametrize("kwargs, error, words", BAD_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_bad_argument_is_named(version, kwargs, error, words):
    factory, variant, _ = FACTORIES[version]
    with pytest.raises(error) as info:
        factory(variant=variant, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_v4_drop_path_rate_checked():
    with pytest.raises(ValueError, match=re.escape("drop_path_rate must be a number in [0, 1), got 1.5")):
        create_mobilenetv4("conv_small", drop_path_rate=1.5)


def test_v1_depth_multiplier_checked():
    with pytest.raises(ValueError, match="depth_multiplier must be a positive integer, got 0"):
        create_mobilenetv1(depth_multiplier=0)


@pytest.mark.parametrize("scope", [
    dict(mode="full"),
    dict(mode="larger_than", output_size_threshold=1000),
    dict(mode="list_of_layers", layer_names=["stage1_block0", "my_head"]),
], ids=lambda scope: scope["mode"])
def test_remat_scope_reaching_the_blocks_is_refused(scope):
    # Keras' remat of these blocks fails at the first fit (TensorFlow, JAX) or updates
    # BatchNorm's moving statistics twice per step (torch): refused at build time.
    with keras.RematScope(**scope):
        with pytest.raises(ValueError, match=re.escape(f"keras.RematScope(mode='{scope['mode']}')")):
            create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)


def test_remat_scope_leaving_the_blocks_alone_trains_alike():
    x = np.random.RandomState(0).rand(4, 32, 32, 3).astype("float32")
    y = keras.utils.to_categorical(np.arange(4), 4)
    results = []
    with keras.RematScope(mode="list_of_layers", layer_names=["my_head"]):
        create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)  # none of ours named
    for scope in (None, dict(mode="activations")):
        keras.utils.set_random_seed(0)
        with keras.RematScope(**scope) if scope else contextlib.nullcontext():
            model = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)
        model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
        model.train_on_batch(x, y)
        results.append([keras.ops.convert_to_numpy(v) for v in model.weights])
    for a, b in zip(*results):  # the recomputed activations round differently on oneDNN
        np.testing.assert_allclose(a, b, atol=1e-4)
