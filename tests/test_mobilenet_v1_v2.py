"""MobileNetV1 and V2 against keras.applications (counts, logits) and timm."""

import keras
import numpy as np
import pytest
from conftest import (
    COUNTED_ONCE,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    once_except,
    random_images,
    randomize_keras_model,
    timm_forward,
)

from keras_mobilenets.weights import transfer_from_keras_model
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2

# The size of test_weights.py's timm checks: their calibrated models are shared
# (conftest caches them), and on JAX one size compiles each op once.
TIMM_SIZE = 96

# The published parameter counts (and width_multiplier composing with the
# variant) are checked for every version in test_models.py (harness.FAMILIES).


@COUNTED_ONCE
@pytest.mark.parametrize("alpha", [0.75, 0.5, 0.25])
def test_v1_widths_without_top_match_keras(alpha):
    ref = keras.applications.MobileNet(alpha=alpha, include_top=False, weights=None)
    ours = create_mobilenetv1(str(alpha), include_top=False)
    assert ours.count_params() == ref.count_params()


@COUNTED_ONCE
@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.3, 1.4])
def test_v2_widths_without_top_match_keras(alpha):
    ref = keras.applications.MobileNetV2(alpha=alpha, include_top=False, weights=None)
    ours = create_mobilenetv2(str(alpha), include_top=False)
    assert ours.count_params() == ref.count_params()


PAIRS = {
    "v1": (lambda s: create_mobilenetv1("0.75", input_shape=s, classifier_activation=None),
           lambda s: keras.applications.MobileNet(alpha=0.75, input_shape=s, weights=None,
                                                  classifier_activation=None)),
    "v2": (lambda s: create_mobilenetv2("1.0", input_shape=s, classifier_activation=None),
           lambda s: keras.applications.MobileNetV2(input_shape=s, weights=None,
                                                    classifier_activation=None)),
}


# Both sizes of both versions on torch; each other backend runs one size of
# each (suite time: 13 s of the JAX run), the two sizes between them.
@pytest.mark.parametrize("version, size", once_except(
    [(v, s) for v in PAIRS for s in (224, 160)], ("v1-224", "v2-160"),
    "the other size pads and strides alike; every backend runs V1 at 224 and V2 at 160"))
def test_logits_match_keras_applications(version, size):
    ours_fn, ref_fn = PAIRS[version]
    shape = (size, size, 3)
    ref = randomize_keras_model(ref_fn(shape))
    ours = ours_fn(shape)
    transfer_from_keras_model(ours, ref)
    x = random_images(2, size, size)
    expected = infer(ref, x)
    assert np.abs(expected).max() > 0.1  # the check can fail
    assert_matches_reference(infer(ours, x), expected)


@pytest.mark.parametrize(
    "timm_name, factory",
    [("mobilenetv1_100", create_mobilenetv1), ("mobilenetv2_100", create_mobilenetv2)],
)
def test_logits_match_timm(timm_name, factory):
    from keras_mobilenets.weights.timm import load_timm_state_dict

    ref = calibrated_timm_model(timm_name, TIMM_SIZE)
    ours = factory(input_shape=(TIMM_SIZE, TIMM_SIZE, 3), style="timm", dropout_rate=0.0,
                   classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(2, TIMM_SIZE, TIMM_SIZE, seed=3)
    assert_matches_reference(infer(ours, x), timm_forward(ref, x))


def test_depth_multiplier_changes_depthwise_width():
    model = create_mobilenetv1("0.25", depth_multiplier=2, include_top=False, input_shape=(64, 64, 3))
    ref = keras.applications.MobileNet(alpha=0.25, depth_multiplier=2, include_top=False,
                                       weights=None, input_shape=(64, 64, 3))
    assert model.count_params() == ref.count_params()
