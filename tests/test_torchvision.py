"""torchvision's MobileNetV2 / V3 weights.

`style="torchvision"` models are exact to `torchvision.models.mobilenet_v2`,
`mobilenet_v3_large` and `mobilenet_v3_small`: trainable parameter counts,
and logits after loading a random, BatchNorm-calibrated torchvision
`state_dict` saved as a `.pth` file (found by its keys, loaded by the names
the layers declare). No internet: the registry's downloads are exercised
with `file://` URLs.
"""

import functools
import hashlib
import os

import keras
import numpy as np
import pytest
from conftest import assert_matches_reference, once_except, random_images, run_once, to_numpy

from keras_mobilenets import create_mobilenetv1, create_mobilenetv2, create_mobilenetv3
from keras_mobilenets.weights import Checkpoint, get_checkpoint, load_file, register_checkpoint
from keras_mobilenets.weights.loading import download
from keras_mobilenets.weights.registry import IMAGENET_MEAN, IMAGENET_STD, default_checkpoint

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 64  # every stride still has a 2x2 map; the numerics are size-independent
# torchvision 0.29.1: `meta["num_params"]` of the weights (all trainable).
MODELS = {
    "mobilenet_v2": (lambda **kw: create_mobilenetv2("1.0", **kw), 3_504_872, 1e-5),
    "mobilenet_v3_large": (lambda **kw: create_mobilenetv3("large", **kw), 5_483_032, 1e-3),
    "mobilenet_v3_small": (lambda **kw: create_mobilenetv3("small", **kw), 2_542_856, 1e-3),
}


@functools.cache
def calibrated_torchvision_model(name, seed=0):
    """A torchvision model with random BN affine and Linear weights, and BN
    statistics estimated on random inputs (activations stay O(1))."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            module.weight.data.normal_(1.0, 0.2, generator=gen)
            module.bias.data.normal_(0.0, 0.2, generator=gen)
        if isinstance(module, torch.nn.Linear):  # torchvision's std 0.01 gives tiny logits
            module.weight.data.normal_(0.0, 0.05, generator=gen)
            module.bias.data.normal_(0.0, 0.05, generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, SIZE, SIZE, generator=gen))
    return model.eval()


@functools.cache
def torchvision_file(name, directory):
    """The calibrated model's state_dict as torchvision publishes it: a `.pth`
    named `<model>-<first 8 hex digits of its sha256>.pth`."""
    path = os.path.join(directory, f"{name}.pth")
    torch.save(calibrated_torchvision_model(name).state_dict(), path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    named = os.path.join(directory, f"{name}-{digest[:8]}.pth")
    os.replace(path, named)
    return named


def torchvision_forward(model, x_nhwc, features=False):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        if features:
            return model.features(x).numpy().transpose(0, 2, 3, 1)
        return model(x).numpy()


def run(model, x):
    """Inference: jitted on JAX (whose first eager call compiles op by op), eager elsewhere."""
    return model.predict_on_batch(x) if keras.backend.backend() == "jax" else model(x, training=False)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("torchvision"))


# The .pth file is read to numpy and assigned by the layers' declared names,
# the same code on every backend; every backend loads and runs V2 and V3
# small (torchvision's two BatchNorm epsilons), the rest runs on torch only.
ONCE = ("the file is read to numpy and assigned by declared names; every backend loads and runs "
        "torchvision's V2 and V3 small here")
TORCHVISION_ONCE = run_once(ONCE)


@pytest.mark.parametrize("name", once_except(MODELS, {"mobilenet_v2", "mobilenet_v3_small"}, ONCE))
def test_torchvision_pth_logits_and_counts(name, ckpt_dir):
    factory, count, epsilon = MODELS[name]
    ref = calibrated_torchvision_model(name)
    model = factory(weights=torchvision_file(name, ckpt_dir), input_shape=(SIZE, SIZE, 3),
                    classifier_activation=None)
    assert trainable_count(model) == count == sum(p.numel() for p in ref.parameters())
    stem = model.get_layer("stem")  # the file's keys picked style="torchvision"
    assert (stem.padding, stem.bn_epsilon) == ("symmetric", epsilon)
    images = random_images(2, SIZE, SIZE, seed=5, low=0.0, high=255.0)
    normalised = ((images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype("float32")
    expected = torchvision_forward(ref, normalised)
    assert np.abs(expected).max() > 0.1
    # MobileNetV3 normalises [0, 255] inputs itself, with ImageNet's mean/std.
    x = images if name.startswith("mobilenet_v3") else normalised
    assert_matches_reference(run(model, x), expected)


@TORCHVISION_ONCE
def test_without_top_drops_torchvisions_classifier(ckpt_dir):
    ref = calibrated_torchvision_model("mobilenet_v2")
    model = create_mobilenetv2(weights=torchvision_file("mobilenet_v2", ckpt_dir),
                               include_top=False, input_shape=(SIZE, SIZE, 3))
    head = ref.features[18]  # the last conv stays, the classifier goes
    np.testing.assert_array_equal(
        to_numpy(model.layers[-1].conv.kernel), head[0].weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(to_numpy(model.layers[-1].bn.moving_variance), head[1].running_var)


@TORCHVISION_ONCE
def test_registry_names_urls_and_preprocessing():
    resize = {"IMAGENET1K_V1": 256, "IMAGENET1K_V2": 232}
    files = {
        "mobilenet_v2.IMAGENET1K_V1": ("mobilenet_v2-b0353104.pth", ("v2", None)),
        "mobilenet_v2.IMAGENET1K_V2": ("mobilenet_v2-7ebf99e0.pth", ("v2", None)),
        "mobilenet_v3_large.IMAGENET1K_V1": ("mobilenet_v3_large-8738ca79.pth", ("v3", "large")),
        "mobilenet_v3_large.IMAGENET1K_V2": ("mobilenet_v3_large-5c1a4163.pth", ("v3", "large")),
        "mobilenet_v3_small.IMAGENET1K_V1": ("mobilenet_v3_small-047dcff4.pth", ("v3", "small")),
    }
    for name, (fname, arch) in files.items():
        model, enum = name.split(".")
        ckpt = get_checkpoint(f"torchvision/{name}")
        published = torchvision.models.get_model_weights(model)[enum]
        assert ckpt.url == published.url == f"https://download.pytorch.org/models/{fname}"
        assert published.transforms().resize_size == [resize[enum]]
        assert (ckpt.style, ckpt.format, ckpt.arch) == ("torchvision", "torchvision", arch + (1.0, False))
        assert ckpt.preprocessing() == dict(
            input_size=224, crop_pct=224 / resize[enum], interpolation="bilinear",
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )
    # weights="imagenet", style="torchvision": torchvision's DEFAULT weights.
    assert default_checkpoint("v2", None, 1.0, False, "torchvision").name.endswith("V2")
    assert default_checkpoint("v3", "large", 1.0, False, "torchvision").name.endswith("V2")
    assert default_checkpoint("v3", "small", 1.0, False, "torchvision").name.endswith("V1")


@TORCHVISION_ONCE
def test_download_by_name_checks_the_hash_in_the_file_name(ckpt_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_MOBILENETS_CACHE", str(tmp_path / "cache"))
    path = torchvision_file("mobilenet_v3_small", ckpt_dir)
    good = register_checkpoint(Checkpoint(
        "test/mobilenet_v3_small.torchvision", "v3", "small", 1.0, "torchvision", "torchvision",
        url=f"file://{path}", mean=IMAGENET_MEAN, std=IMAGENET_STD))
    model = create_mobilenetv3("small", weights=good.name, input_shape=(SIZE, SIZE, 3))
    ref = calibrated_torchvision_model("mobilenet_v3_small")
    np.testing.assert_array_equal(  # the SE's second conv of the first block
        to_numpy(model.get_layer("stage0_block0").se.expand.kernel)[0, 0],
        ref.features[1].block[1].fc2.weight.detach().numpy()[:, :, 0, 0].T,
    )

    renamed = str(tmp_path / "mobilenet_v3_small-00000000.pth")
    with open(path, "rb") as src, open(renamed, "wb") as dst:
        dst.write(src.read())
    bad = register_checkpoint(Checkpoint(
        "test/mobilenet_v3_small.bad_hash", "v3", "small", 1.0, "torchvision", "torchvision",
        url=f"file://{renamed}"))
    with pytest.raises(ValueError, match="sha256 does not start with 00000000"):
        download(bad)
    assert not any((tmp_path / "cache").glob("*bad_hash*"))


@TORCHVISION_ONCE
def test_unknown_torchvision_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        create_mobilenetv3("large", weights="torchvision/mobilenet_v3_large.IMAGENET1K_V3")
    message = str(info.value)
    assert "'torchvision/mobilenet_v3_large.IMAGENET1K_V3'" in message
    for name in ("mobilenet_v2.IMAGENET1K_V1", "mobilenet_v3_small.IMAGENET1K_V1"):
        assert f"'torchvision/{name}'" in message
    with pytest.raises(ValueError, match="variant='large'.*requested variant='small'"):
        create_mobilenetv3("small", weights="torchvision/mobilenet_v3_large.IMAGENET1K_V2")
    with pytest.raises(ValueError, match="needs style='torchvision'"):
        create_mobilenetv2(weights="torchvision/mobilenet_v2.IMAGENET1K_V2", style="timm")


@TORCHVISION_ONCE
def test_wrong_architecture_is_refused_and_the_model_unchanged(ckpt_dir):
    small = torchvision_file("mobilenet_v3_small", ckpt_dir)
    model = create_mobilenetv3("small", style="torchvision", input_shape=(SIZE, SIZE, 3))
    before = [to_numpy(w) for w in model.weights]
    with pytest.raises(ValueError, match="Shape mismatch|no tensor|does not use"):
        load_file(model, torchvision_file("mobilenet_v3_large", ckpt_dir))
    assert all(np.array_equal(a, to_numpy(w)) for a, w in zip(before, model.weights))
    with pytest.raises(ValueError, match="no tensor 'features.1.conv.0.0.weight'"):
        create_mobilenetv2(weights=small, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="MobileNetV1 has no torchvision counterpart"):
        create_mobilenetv1(weights=small)


@TORCHVISION_ONCE
def test_torchvision_style_is_listed_and_checked():
    with pytest.raises(ValueError, match="'keras', 'timm', 'torchvision'"):
        create_mobilenetv2(style="caffe")
    with pytest.raises(ValueError, match="MobileNetV1 has no torchvision counterpart"):
        create_mobilenetv1(style="torchvision")
