"""Variants that are one table row each, and every timm MobileNet checkpoint.

timm's `mobilenetv2_110d`, `mobilenetv2_120d` and `mobilenetv3_large_150d`
differ from their base only by width and depth; `mobilenetv1_100h`,
`mobilenetv3_rw` and the anti-aliased MobileNetV4s by a head conv, a block
setting or the downsampling. Each is a `VARIANTS` row decoded by the shared
builder. Exact to timm: trainable parameter counts and logits after loading a
random, BatchNorm-calibrated timm `state_dict`.
"""

import re

import numpy as np
import pytest
from conftest import (
    COUNTED_ONCE,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    once_except,
    random_images,
    timm_forward,
)

from keras_mobilenets import (
    create_mobilenetv1,
    create_mobilenetv2,
    create_mobilenetv3,
    create_mobilenetv4,
)
from keras_mobilenets.architecture import IR, scale_depth, stages_of
from keras_mobilenets.weights import load_timm_state_dict
from keras_mobilenets.weights.registry import CHECKPOINTS, default_checkpoint
from mobilenet_v2 import VARIANTS as V2
from mobilenet_v3 import VARIANTS as V3

# timm 1.0.31: sum of parameter numel (architecture spec §6.3).
ROWS = {
    "mobilenetv2_110d": (create_mobilenetv2, "110d", 4_516_520),
    "mobilenetv2_120d": (create_mobilenetv2, "120d", 5_831_144),
    "mobilenetv3_large_150d": (create_mobilenetv3, "large_150d", 14_622_320),
    "mobilenetv1_100h": (create_mobilenetv1, "100h", 5_282_600),
    "mobilenetv3_rw": (create_mobilenetv3, "rw", 5_479_918),
    "mobilenetv4_conv_aa_medium": (create_mobilenetv4, "conv_aa_medium", 9_715_512),
    "mobilenetv4_conv_blur_medium": (create_mobilenetv4, "conv_blur_medium", 9_715_512),
}
# Counted only: the same code path as conv_aa_medium, 3.4x the weights.
COUNT_ONLY = {"mobilenetv4_conv_aa_large": (create_mobilenetv4, "conv_aa_large", 32_590_864)}
# timm's MobileNet V1-V5 checkpoints (not the EdgeTPU ones, another family).
FAMILY = re.compile(r"(tf_)?mobilenetv[1-5]_")
SIZE = 64  # every stride still has a 2x2 map; the numerics are size-independent


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@COUNTED_ONCE
@pytest.mark.parametrize("timm_name", list(ROWS) + list(COUNT_ONLY))
def test_trainable_count_equals_timm(timm_name):
    factory, variant, expected = {**ROWS, **COUNT_ONLY}[timm_name]
    model = factory(variant, input_shape=(None, None, 3))
    assert trainable_count(model) == expected
    assert model.name == timm_name


# Every backend checks the anti-aliased rows (their BlurPool and max-pool
# downsampling are layers of their own); the other rows are table rows of
# layers every backend checks in test_mobilenet_v*.py: torch only (suite time).
@pytest.mark.parametrize("timm_name", once_except(
    ROWS, {"mobilenetv4_conv_aa_medium", "mobilenetv4_conv_blur_medium"},
    "rows of layers that test_mobilenet_v1_v2/v3/v4.py check on every backend"))
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
    assert_matches_reference(infer(ours, x), expected)


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


@pytest.mark.parametrize("timm_name", ["mobilenetv2_110d", "mobilenetv3_large_150d"])
def test_imagenet_weights_resolve_to_the_timm_checkpoint(timm_name):
    factory, variant, _ = ROWS[timm_name]
    spec = (V2 if factory is create_mobilenetv2 else V3)[variant]
    version = "v2" if factory is create_mobilenetv2 else "v3"
    checkpoint = default_checkpoint(version, variant, spec.width, False, "timm")
    assert checkpoint.name.startswith(f"timm/{timm_name}.")
    assert checkpoint.url.startswith(f"https://huggingface.co/timm/{timm_name}.")


def test_every_timm_checkpoint_is_registered_with_its_preprocessing():
    # A new timm release shows here what is missing.
    timm = pytest.importorskip("timm")
    names = [n for n in timm.list_pretrained() if FAMILY.match(n)]
    assert len(names) >= 48
    missing = [n for n in names if n not in CHECKPOINTS]
    assert not missing, f"timm checkpoints without a registry entry: {missing}"
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        ours = CHECKPOINTS[name]
        assert (ours.input_size, ours.crop_pct, ours.interpolation, ours.num_classes) == (
            cfg["input_size"][1], cfg["crop_pct"], cfg["interpolation"], cfg["num_classes"]
        ), name
        assert (tuple(ours.mean), tuple(ours.std)) == (tuple(cfg["mean"]), tuple(cfg["std"])), name


@pytest.mark.parametrize(
    "name, factory, variant",
    [
        ("timm/mobilenetv3_large_100.miil_in21k", create_mobilenetv3, "large"),
        ("timm/mobilenetv4_conv_medium.e180_ad_r384_in12k", create_mobilenetv4, "conv_medium"),
    ],
)
def test_a_named_checkpoints_class_count_is_the_default(name, factory, variant, monkeypatch):
    # The head is sized from the registry; the download and load are replaced.
    from keras_mobilenets.weights import loading

    monkeypatch.setattr(loading, "fetch", lambda source, include_top: None)
    monkeypatch.setattr(loading, "load_weights", lambda model, source, include_top: model)
    model = factory(variant, weights=name, input_shape=(32, 32, 3))
    assert model.output_shape == (None, CHECKPOINTS[name].num_classes)
    assert CHECKPOINTS[name].num_classes > 1000
    with pytest.raises(ValueError, match=f"{CHECKPOINTS[name].num_classes}-class classifier"):
        factory(variant, weights=name, num_classes=1000)


def test_deep_variants_default_to_timm_style():
    model = create_mobilenetv2("110d", input_shape=(None, None, 3))
    assert model.get_layer("stem").padding == "symmetric"
    assert model.get_layer("stem").conv.filters == 32  # fixed stem
    assert model.get_layer("head_conv").conv.filters == 1280  # fixed head
    keras_style = create_mobilenetv2("110d", input_shape=(None, None, 3), style="keras")
    assert keras_style.get_layer("stem").padding == "same"


def test_encoder_checkpoint_needs_include_top_false(monkeypatch):
    from keras_mobilenets import create_mobilenetv5
    from keras_mobilenets.weights import loading

    name = "timm/mobilenetv5_300m.gemma3n"
    with pytest.raises(ValueError, match="encoder without a classifier.*include_top=False"):
        create_mobilenetv5("300m", weights=name, input_shape=(64, 64, 3))
    checkpoint = CHECKPOINTS[name]
    source, style = loading.resolve_weights(
        name, ("v5", "300m", 1.0, False), None, "timm", False, None, 64
    )
    assert source is checkpoint and style == "timm"
