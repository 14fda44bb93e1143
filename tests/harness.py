"""One check per model family, run over MobileNet V1-V4 by tests/test_models.py.

In the spirit of keras-hub's `run_backbone_test` (keras_hub/src/tests/
test_case.py): each family states what is particular to it (its factory, a
small variant for the cheap checks, its input range, its published parameter
counts and how they are counted); the checks themselves are written once.
Reference equivalence (logits and counts against keras.applications and
timm) stays in the per-version files, next to the reference code it needs.

Cheap by construction: forward passes at 32-64 px, and parameter counts
without any forward pass.
"""

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
from conftest import infer, max_abs_diff, random_images, to_numpy

from keras_mobilenets.architecture import DS, IR, MQA, UIB, Architecture, Conv, Fused, Head, Variant
from keras_mobilenets.builder import build_model
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def all_count(model):
    return model.count_params()


@dataclasses.dataclass(frozen=True)
class Family:
    factory: Callable
    small: dict  # kwargs of the small model used for the forward checks
    saved: dict  # kwargs of the model saved to .keras (the richest cheap one)
    low: float  # input range the model takes
    high: float
    count: Callable  # what the published counts count
    counts: dict  # id -> (kwargs, expected count)
    default_size: int
    small_channels: int  # channels of the small model's last feature map

    def images(self, batch, height, width, seed=0):
        return random_images(batch, height, width, seed=seed, low=self.low, high=self.high)


# keras.applications 3.15.1 count_params() for V1-V3 (1000 classes, with
# top unless the id says otherwise; architecture spec §6.2); timm 1.0.31
# trainable parameters for V4 (spec §6.3), including timm's registered width
# variants.
FAMILIES = {
    "v1": Family(
        factory=create_mobilenetv1,
        small=dict(variant="0.25"),
        saved=dict(variant="0.5"),
        low=-1.0,
        high=1.0,
        count=all_count,
        counts={
            "1.0": (dict(variant="1.0"), 4_253_864),
            "0.75": (dict(variant="0.75"), 2_601_976),
            "0.5": (dict(variant="0.5"), 1_342_536),
            "0.50": (dict(variant="0.50"), 1_342_536),
            "0.25": (dict(variant="0.25"), 475_544),
            "1.0_times_0.5": (dict(variant="1.0", width_multiplier=0.5), 1_342_536),
            "1.0_no_top": (dict(variant="1.0", include_top=False), 3_228_864),
        },
        default_size=224,
        small_channels=256,
    ),
    "v2": Family(
        factory=create_mobilenetv2,
        small=dict(variant="0.35"),
        saved=dict(variant="0.5"),
        low=-1.0,
        high=1.0,
        count=all_count,
        counts={
            "1.0": (dict(variant="1.0"), 3_538_984),
            "1.4": (dict(variant="1.4"), 6_156_712),
            "1.3": (dict(variant="1.3"), 5_431_048),
            "0.75": (dict(variant="0.75"), 2_663_064),
            "0.5": (dict(variant="0.5"), 1_987_224),
            "0.50": (dict(variant="0.50"), 1_987_224),
            "0.35": (dict(variant="0.35"), 1_691_208),
            "1.0_times_0.75": (dict(variant="1.0", width_multiplier=0.75), 2_663_064),
            "1.0_no_top": (dict(variant="1.0", include_top=False), 2_257_984),
        },
        default_size=224,
        small_channels=1280,
    ),
    "v3": Family(
        factory=create_mobilenetv3,
        small=dict(variant="small"),
        saved=dict(variant="small"),
        low=0.0,  # V3 rescales [0, 255] inside the model
        high=255.0,
        count=all_count,
        counts={
            "large": (dict(variant="large"), 5_507_432),
            "large_0.75": (dict(variant="large", width_multiplier=0.75), 4_012_616),
            "large_min": (dict(variant="large", minimalistic=True), 3_948_688),
            "small": (dict(variant="small"), 2_554_968),
            "small_0.75": (dict(variant="small", width_multiplier=0.75), 2_051_552),
            "small_min": (dict(variant="small", minimalistic=True), 2_056_848),
            "large_no_top": (dict(variant="large", include_top=False), 2_996_352),
            "small_no_top": (dict(variant="small", include_top=False), 939_120),
        },
        default_size=224,
        small_channels=576,
    ),
    "v4": Family(
        factory=create_mobilenetv4,
        small=dict(variant="conv_small"),
        # The hybrid, with stochastic depth: attention, LayerScale and
        # DropPath all go through the file.
        saved=dict(variant="hybrid_medium", drop_path_rate=0.1),
        low=-1.0,
        high=1.0,
        count=trainable_count,
        counts={
            "conv_small": (dict(variant="conv_small"), 3_774_024),
            "conv_medium": (dict(variant="conv_medium"), 9_715_512),
            "conv_large": (dict(variant="conv_large"), 32_590_864),
            "hybrid_medium": (dict(variant="hybrid_medium"), 11_074_648),
            "hybrid_large": (dict(variant="hybrid_large"), 37_764_624),
            "conv_small_0.35": (dict(variant="conv_small", width_multiplier=0.35), 1_905_384),
            "conv_small_0.5": (dict(variant="conv_small", width_multiplier=0.5), 2_238_952),
            "hybrid_medium_0.75": (dict(variant="hybrid_medium", width_multiplier=0.75), 7_313_528),
            "hybrid_large_0.75": (dict(variant="hybrid_large", width_multiplier=0.75), 22_754_984),
        },
        default_size=224,  # conv_small's; the hybrids default to 256 (checked below)
        small_channels=960,
    ),
}

# The small models' last feature map at 32 px is 1x1; the models are built
# once per shape on JAX, so the checks share a few sizes.
SIZE = 32


def count_cases():
    for version, family in FAMILIES.items():
        for key in family.counts:
            yield version, key


def check_parameter_count(version, key):
    """Published parameter count; no forward pass, so any input shape works:
    (None, None, 3) builds no resolution-dependent layer."""
    family = FAMILIES[version]
    kwargs, expected = family.counts[key]
    model = family.factory(**kwargs, input_shape=(None, None, 3))
    assert family.count(model) == expected


def check_output_shapes(version):
    """The default model: 1000 classes at the variant's default resolution,
    and the backbone's last feature map at stride 32."""
    family = FAMILIES[version]
    model = family.factory(**family.small)
    assert model.input_shape == (None, family.default_size, family.default_size, 3)
    assert model.output_shape == (None, 1000)
    backbone = family.factory(**family.small, include_top=False, input_shape=(96, 64, 3))
    assert backbone.output_shape == (None, 3, 2, family.small_channels)


def check_forward_is_a_distribution(version, size=SIZE):
    """A small model with a softmax top: non-negative probabilities summing
    to one. (Freshly initialised, the outputs hardly depend on the image:
    the logit checks against the references use calibrated weights.)"""
    family = FAMILIES[version]
    model = family.factory(**family.small, input_shape=(size, size, 3), num_classes=10)
    y = infer(model, family.images(2, size, size))
    assert y.shape == (2, 10)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def check_dynamic_input_shapes(version, sizes=((64, 80), (SIZE, SIZE))):
    """`input_shape=(None, None, 3)` runs at several sizes and gives what a
    model built for that size gives with the same weights."""
    family = FAMILIES[version]
    dynamic = family.factory(**family.small, input_shape=(None, None, 3), num_classes=7)
    assert dynamic.input_shape == (None, None, None, 3)
    for height, width in sizes:
        x = family.images(1, height, width, seed=height)
        y = infer(dynamic, x)
        assert y.shape == (1, 7)
        np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-5)
    fixed = family.factory(**family.small, input_shape=(height, width, 3), num_classes=7)
    fixed.set_weights(dynamic.get_weights())
    assert max_abs_diff(infer(fixed, x), y) < 1e-5


def check_keras_file_round_trip(version, path, size=64):
    """save -> load_model: same classes, same configs, bit-identical outputs."""
    family = FAMILIES[version]
    model = family.factory(**family.saved, input_shape=(size, size, 3), num_classes=5)
    x = family.images(2, size, size)
    expected = infer(model, x)
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is type(model)  # the factories' FastFunctional, not a plain Functional
    assert [type(layer) for layer in reloaded.layers] == [type(layer) for layer in model.layers]
    assert [layer.get_config() for layer in reloaded.layers] == [
        layer.get_config() for layer in model.layers
    ]
    assert max_abs_diff(infer(reloaded, x), expected) == 0.0


def check_mixed_precision_forward(version, policy):
    """Under a mixed policy the variables stay float32, the compute dtype is
    the policy's and the probabilities come out float32, finite and summing
    to one."""
    family = FAMILIES[version]
    # V4: the hybrid at 64 px, where its attention still sees 2x2 keys.
    kwargs, size = (family.saved, 64) if version == "v4" else (family.small, SIZE)
    model = family.factory(**kwargs, input_shape=(size, size, 3), num_classes=10)
    compute = policy.split("_")[1]
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {"float32"}
    assert any(layer.compute_dtype == compute for layer in model.layers)
    y = infer(model, family.images(2, size, size))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-3)


def check_fit(version, size=SIZE):
    """`compile` + `fit` (the README's recipe, smaller): finite losses, every
    trainable variable moved, BatchNorm statistics updated. On TensorFlow
    the train step is traced once: Adam's slots and the metric are built
    before the trace (`FastFunctional._maybe_symbolic_build`; Keras creates
    them inside it, and `tf.function` then traces again)."""
    family = FAMILIES[version]
    model = family.factory(**family.small, input_shape=(size, size, 3), num_classes=10)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    traces = []
    step = model.train_step
    model.train_step = lambda *args: traces.append(1) or step(*args)
    rng = np.random.default_rng(0)
    x = family.images(16, size, size)
    y = keras.utils.to_categorical(rng.integers(0, 10, 16), 10)
    before = [to_numpy(w).copy() for w in model.weights]
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert len(history.history["loss"]) == 3
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == 1
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)  # Adam's slots
    assert all(np.isfinite(history.history["loss"]))
    for w, old in zip(model.weights, before):
        if w.trainable or "moving" in w.path:
            assert not np.array_equal(to_numpy(w), old), w.path


# Every row type of the block language in one small table, through the same
# builder: for checks of whole-model machinery whose cost grows with the
# layer count (Dynamo's trace walks Keras' Python for every layer), not of
# any published variant's numerics.
EVERY_ROW = Architecture(
    version="v4", stem=8, activation="hard_swish", layer_scale=1e-5, in_model_preprocessing=True,
    default_style="timm", head=Head(hidden=32, hidden_bias=False, hidden_norm=True),
    stages=[
        [DS(8, stride=2, se=0.25, act="relu")],
        [IR(16, 3, kernel=5, stride=2, se=0.25), Fused(16, 2, stride=1)],
        [UIB(24, 3, 5, 2, stride=2), UIB(24, 0, 3, 2), UIB(24, 3, 0, 2), UIB(24, 0, 0, 2),
         MQA(2, 8, 2)],
        [Conv(32)],
    ],
)


def every_row_model(**kwargs):
    """A model of `EVERY_ROW` (with V3's in-model rescaling: [0, 255] inputs)."""
    return build_model("EveryRow", {"every_row": Variant(EVERY_ROW)}, "every_row",
                       include_preprocessing=True, **kwargs)
