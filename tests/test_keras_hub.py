"""keras-hub presets: `weights="path/to/preset_dir"`, exact to keras-hub's own model.

The presets are made here, offline: keras-hub's MobileNetBackbone (and its
MobileNetImageClassifier) built from the config keras-hub's timm converter
gives a timm MobileNetV3, with random weights and BatchNorm statistics, then
`save_to_preset`. MobileNetV5: keras-hub's MobileNetV5Backbone built from
our variant's rows (checked against keras-hub's own `mobilenetv5_300m`
config), at width 0.25 of "base" to keep it small.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from conftest import assert_matches_reference, infer, random_images, run_once, to_numpy

from keras_mobilenets.architecture import MQA, Fused, stages_of
from keras_mobilenets.layers import make_divisible
from keras_mobilenets.weights import keras_hub as hub_presets
from keras_mobilenets.weights import load_file
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v5 import VARIANTS as V5_VARIANTS
from mobilenet_v5 import create_mobilenetv5

keras_hub = pytest.importorskip("keras_hub")

# A preset is read to numpy (with keras-hub or h5py) and assigned by the
# layers' declared names, the same code on every backend: every backend loads
# a V3 classifier preset and runs it against keras-hub's own model; its
# backbone alone, the V5 preset, the refusals, readers and the larger preset
# run on torch only (suite time: the V5 preset took 20 s of the TensorFlow run
# and 29 s of the JAX run; V5's forward runs on every backend against timm in
# test_mobilenet_v5.py, and keras-hub's SAME padding is the keras style of
# V1-V3).
HUB_ONCE = run_once("presets are read to numpy and assigned by declared names; every backend "
                    "loads and runs a V3 preset against keras-hub here")

SIZE = 64
CLASSES = 7
# ImageNet mean / std, as the preset's image converter `x * scale + offset`.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def keras_hub_backbone(timm_name, seed=0):
    """keras-hub's MobileNetV3 for a timm name, with random BN affine and statistics."""
    from keras_hub.src.utils.timm.convert_mobilenet import convert_backbone_config

    config = convert_backbone_config({"architecture": timm_name})
    backbone = keras_hub.models.MobileNetBackbone(**config, image_shape=(None, None, 3))
    rng = np.random.default_rng(seed)
    for w in backbone.weights:
        shape, path = tuple(w.shape), w.path
        if "gamma" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif "moving_variance" in path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "beta" in path or "moving_mean" in path or "bias" in path:
            value = rng.normal(0.0, 0.2, shape)
        else:
            continue  # kernels: keras' own random initialisation
        w.assign(value.astype("float32"))
    return backbone


def keras_hub_classifier(backbone, num_features, seed=1):
    converter = keras_hub.layers.MobileNetImageConverter(
        image_size=(SIZE, SIZE),
        scale=[1.0 / (255.0 * s) for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD)],
    )
    preprocessor = keras_hub.models.MobileNetImageClassifierPreprocessor(image_converter=converter)
    classifier = keras_hub.models.MobileNetImageClassifier(
        backbone=backbone, num_classes=CLASSES, num_features=num_features,
        preprocessor=preprocessor,
    )
    rng = np.random.default_rng(seed)
    for w in classifier.weights[len(backbone.weights):]:
        w.assign(rng.normal(0.0, 0.1, tuple(w.shape)).astype("float32"))
    return classifier


@pytest.fixture(scope="module")
def small_050(tmp_path_factory):
    """`(classifier preset, backbone-only preset, backbone, classifier)` of
    keras-hub's mobilenet_v3_small_050."""
    root = tmp_path_factory.mktemp("keras_hub")
    backbone = keras_hub_backbone("mobilenetv3_small_050")
    classifier = keras_hub_classifier(backbone, num_features=1024)
    with_head, backbone_only = str(root / "small_050"), str(root / "small_050_backbone")
    classifier.save_to_preset(with_head)
    backbone.save_to_preset(backbone_only)
    return with_head, backbone_only, backbone, classifier


@HUB_ONCE
def test_preset_files(small_050):
    with_head, backbone_only, _, _ = small_050
    assert {"config.json", "metadata.json", "model.weights.h5"} <= set(os.listdir(backbone_only))
    assert {"task.json", "task.weights.h5", "preprocessor.json"} <= set(os.listdir(with_head))


def test_classifier_preset_matches_keras_hub(small_050):
    with_head, _, _, classifier = small_050
    x = random_images(2, SIZE, SIZE)
    model = create_mobilenetv3(
        "small", width_multiplier=0.5, include_preprocessing=False, input_shape=(SIZE, SIZE, 3),
        classifier_activation=None, weights=with_head,
    )
    assert model.get_layer("stem").padding == "symmetric"  # style "timm"
    assert model.output.shape[-1] == CLASSES  # num_classes from the preset's task
    # The Task's own predict() would run its preprocessor: the bare network.
    logits = keras.Model(classifier.input, classifier.output)
    assert_matches_reference(infer(model, x), infer(logits, x))


@HUB_ONCE
def test_backbone_of_a_classifier_preset_matches_keras_hub(small_050):
    # Without the top a classifier preset's head is left out; its image
    # converter becomes the model's Rescaling. (The backbone-only preset:
    # test_large_preset.)
    with_head, _, backbone, _ = small_050
    model = create_mobilenetv3(
        "small", width_multiplier=0.5, include_top=False, input_shape=(SIZE, SIZE, 3),
        weights=with_head,
    )
    pixels = random_images(2, SIZE, SIZE, low=0.0, high=255.0)
    normalised = ((pixels / 255.0 - np.array(MEAN)) / np.array(STD)).astype("float32")
    assert_matches_reference(infer(model, pixels), infer(backbone, normalised))


@HUB_ONCE
def test_h5_reader_matches_keras_hub(small_050):
    # Without keras-hub the preset is read with h5py: the same tensors.
    with_head = small_050[0]
    through_hub = hub_presets.read_state_dict(with_head, use_keras_hub=True)
    direct = hub_presets.read_state_dict(with_head, use_keras_hub=False)
    assert sorted(through_hub) == sorted(direct)
    assert "classifier.weight" in direct and "blocks.5.0.conv.weight" in direct
    for key, value in through_hub.items():
        np.testing.assert_array_equal(value, direct[key], err_msg=key)


@HUB_ONCE
def test_large_preset(tmp_path):
    backbone = keras_hub_backbone("mobilenetv3_large_100", seed=2)
    backbone.save_to_preset(str(tmp_path / "large"))
    model = create_mobilenetv3(
        "large", include_top=False, include_preprocessing=False, input_shape=(SIZE, SIZE, 3),
        weights=str(tmp_path / "large"),
    )
    x = random_images(1, SIZE, SIZE, seed=3)
    assert_matches_reference(infer(model, x), infer(backbone, x))


def weights_snapshot(model):
    return [to_numpy(w).copy() for w in model.weights]


@HUB_ONCE
def test_other_architecture_refused(small_050):
    with_head, backbone_only, _, _ = small_050
    for kwargs, requested in [
        (dict(variant="small", width_multiplier=0.75), "variant='small' width=0.75"),
        (dict(variant="large", width_multiplier=0.5), "variant='large' width=0.5"),
        (dict(variant="small", width_multiplier=0.5, minimalistic=True),
         "minimalistic=True: keras-hub has no minimalistic"),
    ]:
        with pytest.raises(ValueError, match=rf"variant='small' width=0.5\).*{requested}"):
            create_mobilenetv3(include_top=False, weights=backbone_only, **kwargs)
    with pytest.raises(ValueError, match="MobileNetV2 variant=None width=1: .*create_mobilenetv3"):
        create_mobilenetv2(include_top=False, weights=backbone_only)
    with pytest.raises(ValueError, match="style='timm'"):
        create_mobilenetv3("small", 0.5, include_top=False, weights=backbone_only, style="keras")
    with pytest.raises(ValueError, match="no classifier.*include_top=False"):
        create_mobilenetv3("small", 0.5, weights=backbone_only)
    with pytest.raises(ValueError, match=f"{CLASSES}-class classifier but num_classes=10"):
        create_mobilenetv3("small", 0.5, weights=with_head, num_classes=10)

    # Straight into an existing model of the same widths but keras.applications'
    # conventions: refused before anything is written.
    model = create_mobilenetv3(
        "small", width_multiplier=0.5, include_top=False, input_shape=(SIZE, SIZE, 3),
        style="keras",
    )
    before = weights_snapshot(model)
    with pytest.raises(ValueError, match="conv_stem has padding 'symmetric' in the preset and 'same'"):
        load_file(model, backbone_only)
    assert all(np.array_equal(to_numpy(w), b) for w, b in zip(model.weights, before))


@HUB_ONCE
def test_not_a_preset(small_050, tmp_path, monkeypatch):
    backbone_only = small_050[1]
    model = create_mobilenetv3(
        "small", width_multiplier=0.5, include_top=False, input_shape=(SIZE, SIZE, 3),
        style="timm",
    )
    before = weights_snapshot(model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is not a keras-hub preset: it has no config.json"):
        create_mobilenetv3("small", 0.5, include_top=False, weights=str(empty))
    with pytest.raises(ValueError, match="is not a keras-hub preset"):
        load_file(model, str(empty))

    other = tmp_path / "other"
    shutil.copytree(backbone_only, other)
    config = json.loads((other / "config.json").read_text())
    config["class_name"] = "ResNetBackbone"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds a ResNetBackbone, not a MobileNetBackbone"):
        create_mobilenetv3("small", 0.5, include_top=False, weights=str(other))

    broken = tmp_path / "broken"
    shutil.copytree(backbone_only, broken)
    data = (broken / "model.weights.h5").read_bytes()
    (broken / "model.weights.h5").write_bytes(data[: len(data) // 2])
    read = hub_presets.read_state_dict
    for use_keras_hub in (True, False):  # either reader: refused, model unchanged
        monkeypatch.setattr(
            hub_presets, "read_state_dict",
            lambda path, with_head=True, use_keras_hub=None, use=use_keras_hub: read(
                path, with_head, use
            ),
        )
        with pytest.raises(ValueError, match="truncated, corrupt"):
            load_file(model, str(broken))
        assert all(np.array_equal(to_numpy(w), b) for w, b in zip(model.weights, before))


# ------------------------------------------------------------------ MobileNetV5


def keras_hub_v5_config(variant, width=1.0):
    """keras-hub's MobileNetV5Backbone config of our `variant` at `width`,
    written in keras-hub's (timm's) block strings."""
    from keras_hub.src.models.mobilenetv5.mobilenetv5_builder import (
        convert_arch_def_to_stackwise,
    )

    arch_def, channels = [], 64
    for stage in stages_of(V5_VARIANTS[variant]):
        rows = []
        for r in stage:
            if isinstance(r, MQA):
                kv = f"_v{r.kv_stride}" if r.kv_stride > 1 else ""
                rows.append(f"mqa_r1_k3_h{r.heads}{kv}_s1_d{r.key_dim}_c{channels}")
                continue
            channels = make_divisible(r.filters * width)
            if isinstance(r, Fused):
                rows.append(f"er_r1_k{r.kernel}_s{r.stride}_e{r.expansion:g}_c{channels}")
            else:
                rows.append(
                    f"uir_r1_a{r.start}_k{r.middle}_s{r.stride}_e{r.expansion:g}_c{channels}"
                )
        arch_def.append(rows)
    return dict(
        convert_arch_def_to_stackwise(arch_def), stem_size=64, num_features=2048,
        norm_layer="rms_norm", act_layer="gelu", use_msfa=True, layer_scale_init_value=1e-5,
    )


@HUB_ONCE
def test_v5_300m_config_is_keras_hubs():
    # keras-hub's own mobilenetv5_300m (its Gemma 3n preset) is our 300m.
    from keras_hub.src.utils.timm.convert_mobilenetv5 import convert_backbone_config

    theirs = convert_backbone_config({"architecture": "mobilenetv5_300m"})
    assert theirs == keras_hub_v5_config("300m")
    assert hub_presets.describe(theirs) == ("300m", 1.0)


@pytest.fixture(scope="module")
def v5_base(tmp_path_factory):
    """`(preset, backbone)`: keras-hub's MobileNetV5Backbone of our base at
    width 0.25, random RMSNorm and layer-scale weights (its conv biases,
    which timm has not, stay zero as keras-hub's converter leaves them)."""
    config = keras_hub_v5_config("base", 0.25)
    backbone = keras_hub.models.MobileNetV5Backbone(**config, image_shape=(None, None, 3))
    rng = np.random.default_rng(4)
    for w in backbone.weights:
        if len(w.shape) == 1 and "bias" not in w.path:
            w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32"))
    path = str(tmp_path_factory.mktemp("keras_hub_v5") / "base_025")
    backbone.save_to_preset(path)
    return path, backbone


@HUB_ONCE
def test_v5_preset_matches_keras_hub(v5_base):
    path, backbone = v5_base
    model = create_mobilenetv5(
        "base", width_multiplier=0.25, include_top=False, input_shape=(SIZE, SIZE, 3),
        weights=path,
    )
    # keras-hub's conventions: SAME padding (style "keras"), exact GELU.
    assert model.get_layer("stem").padding == "same"
    assert model.get_layer("msfa").get_config()["activation"] == "gelu"
    x = random_images(1, SIZE, SIZE, seed=5)
    assert_matches_reference(infer(model, x), infer(backbone, x))


@HUB_ONCE
def test_v5_preset_refused(v5_base, tmp_path):
    path = v5_base[0]
    for kwargs, match in [
        (dict(variant="300m"), r"variant='base' width=0.25\).*variant='300m' width=1"),
        (dict(variant="base", width_multiplier=0.5), "variant='base' width=0.5: build"),
        (dict(variant="base", width_multiplier=0.25, style="timm"), "need style='keras'"),
    ]:
        with pytest.raises(ValueError, match=match):
            create_mobilenetv5(include_top=False, weights=path, **kwargs)
    with pytest.raises(ValueError, match="pass include_top=False"):
        create_mobilenetv5("base", 0.25, weights=path)
    with pytest.raises(ValueError, match="MobileNetV5: use create_mobilenetv5"):
        create_mobilenetv3(include_top=False, weights=path)
    with pytest.raises(ValueError, match="read through keras-hub only"):
        hub_presets.read_state_dict(path, use_keras_hub=False)
    # Another activation or stem than our MobileNetV5's: refused before building.
    other = tmp_path / "other"
    shutil.copytree(path, other)
    config = json.loads((other / "config.json").read_text())
    config["config"].update(act_layer="relu", stem_size=32)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"not a MobileNetV5 .*stem_size=32.*act_layer='relu'"):
        create_mobilenetv5("base", 0.25, include_top=False, weights=str(other))


@HUB_ONCE
def test_v5_preset_into_tanh_gelu_model_refused(v5_base, tmp_path):
    # timm's MobileNetV5 (tanh GELU) of the same widths: refused, unchanged.
    model = create_mobilenetv5(
        "base", 0.25, include_top=False, input_shape=(SIZE, SIZE, 3), style="keras"
    )
    before = weights_snapshot(model)
    with pytest.raises(ValueError, match="has activation 'gelu_tanh', the preset 'gelu'"):
        load_file(model, v5_base[0])
    # A preset whose strides differ (which the weights' shapes cannot show).
    strided = tmp_path / "strided"
    shutil.copytree(v5_base[0], strided)
    config = json.loads((strided / "config.json").read_text())
    config["config"]["stackwise_strides"][1][1] = 2
    (strided / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"blocks.1.1 \(block type, stride.*\('uir', 2, 1\) in the"):
        load_file(model, str(strided))
    assert all(np.array_equal(to_numpy(w), b) for w, b in zip(model.weights, before))
