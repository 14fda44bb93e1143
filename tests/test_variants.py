"""Variants that are one table row each: timm's deeper MobileNetV2/V3.

`mobilenetv2_110d`, `mobilenetv2_120d` and `mobilenetv3_large_150d` differ
from their base only by width and depth; each is a `VARIANTS` row decoded by
the shared builder. Exact to timm: trainable parameter counts and logits
after loading a random, BatchNorm-calibrated timm `state_dict`.
"""

import numpy as np
import pytest
from conftest import assert_matches_reference, calibrated_timm_model, random_images, timm_forward

from keras_mobilenets import create_mobilenetv2, create_mobilenetv3
from keras_mobilenets.builder import IR, scale_depth, stages_of
from keras_mobilenets.weights import load_timm_state_dict
from keras_mobilenets.weights.registry import default_checkpoint
from mobilenet_v2 import VARIANTS as V2
from mobilenet_v3 import VARIANTS as V3

# timm 1.0.31: sum of parameter numel (architecture spec §6.3).
ROWS = {
    "mobilenetv2_110d": (create_mobilenetv2, "110d", 4_516_520),
    "mobilenetv2_120d": (create_mobilenetv2, "120d", 5_831_144),
    "mobilenetv3_large_150d": (create_mobilenetv3, "large_150d", 14_622_320),
}
SIZE = 64  # every stride still has a 2x2 map; the numerics are size-independent


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("timm_name", list(ROWS))
def test_trainable_count_equals_timm(timm_name):
    factory, variant, expected = ROWS[timm_name]
    model = factory(variant, input_shape=(None, None, 3))
    assert trainable_count(model) == expected
    assert model.name == timm_name


@pytest.mark.parametrize("timm_name", list(ROWS))
def test_logits_match_timm(timm_name):
    factory, variant, _ = ROWS[timm_name]
    ref = calibrated_timm_model(timm_name, SIZE)
    kwargs = dict(input_shape=(SIZE, SIZE, 3), classifier_activation=None, dropout_rate=0.0)
    if factory is create_mobilenetv3:
        kwargs["include_preprocessing"] = False
    ours = factory(variant, **kwargs)
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(2, SIZE, SIZE, seed=11)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(ours(x, training=False), expected)


@pytest.mark.parametrize("repeats", [[1], [3], [1, 1, 2], [2, 1], [1, 3, 1, 4]])
@pytest.mark.parametrize("depth", [1.2, 1.4, 2.0])
def test_depth_scaling_equals_timm(repeats, depth):
    builder = pytest.importorskip("timm.models._efficientnet_builder")
    stage = [IR(8, 6, repeats=r) for r in repeats]
    ours = [row.repeats for row in scale_depth(stage, depth)]
    theirs = builder._scale_stage_depth([{"row": i} for i in range(len(repeats))], repeats, depth)
    assert ours == [sum(1 for b in theirs if b["row"] == i) for i in range(len(repeats))]


def test_deep_variants_stage_depths():
    # 110d keeps the first and last stages; 150d scales the last conv too.
    assert [len(s) for s in stages_of(V2["110d"])] == [1, 3, 4, 5, 4, 4, 1]
    assert [len(s) for s in stages_of(V3["large_150d"])] == [2, 3, 4, 5, 3, 4, 2]


@pytest.mark.parametrize("timm_name", list(ROWS))
def test_imagenet_weights_resolve_to_the_timm_checkpoint(timm_name):
    factory, variant, _ = ROWS[timm_name]
    spec = (V2 if factory is create_mobilenetv2 else V3)[variant]
    version = "v2" if factory is create_mobilenetv2 else "v3"
    checkpoint = default_checkpoint(version, variant, spec.width, False, "timm")
    assert checkpoint.name.startswith(f"timm/{timm_name}.")
    assert checkpoint.url.startswith(f"https://huggingface.co/timm/{timm_name}.")


def test_deep_variants_default_to_timm_style():
    model = create_mobilenetv2("110d", input_shape=(None, None, 3))
    assert model.get_layer("stem").padding == "symmetric"
    assert model.get_layer("stem").conv.filters == 32  # fixed stem
    assert model.get_layer("head_conv").conv.filters == 1280  # fixed head
    keras_style = create_mobilenetv2("110d", input_shape=(None, None, 3), style="keras")
    assert keras_style.get_layer("stem").padding == "same"
