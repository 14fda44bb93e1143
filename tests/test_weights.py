"""Pretrained-weight loading: timm and keras.applications files, downloads,
bad files. No internet: every checkpoint is made here from a reference model."""

import functools
import hashlib
import http.server
import os
import threading

import keras
import numpy as np
import pytest
from conftest import (
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    max_abs_diff,
    once_except,
    random_images,
    randomize_keras_model,
    run_once,
    timm_forward,
    to_numpy,
)

from keras_mobilenets.builder import preprocessing_layer
from keras_mobilenets.convert import main as convert_main
from keras_mobilenets.weights import Checkpoint, get_checkpoint, register_checkpoint
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v1 import preprocess_input as v1_preprocess
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4
from mobilenet_v4 import preprocess_input as v4_preprocess

SIZE = 96  # small inputs: these tests are about the file formats

# Reading a file, converting its tensors and assigning them shape by shape is
# numpy and the same code on every backend; each backend's forward with the
# references' weights is checked in test_mobilenet_v1_v2/v3/v4.py through the
# same loaders. So one file per format loads on every backend (EVERY_BACKEND),
# the rest on torch only (suite time: 138 s of the JAX run).
ONCE = ("files are read to numpy and assigned shape by shape; every backend loads one file per "
        "format here, and test_mobilenet_v*.py checks each backend's forward with the "
        "references' weights")
FILES_ONCE = run_once(ONCE)
EVERY_BACKEND = {"mobilenetv3_small_100", "v1-top"}

# Every timm model the version issues name, with the factory call that matches it.
TIMM_MODELS = {
    "mobilenetv1_100": lambda **kw: create_mobilenetv1(**kw),
    "mobilenetv2_100": lambda **kw: create_mobilenetv2(**kw),
    "mobilenetv3_large_100": lambda **kw: create_mobilenetv3("large", include_preprocessing=False, **kw),
    "mobilenetv3_small_100": lambda **kw: create_mobilenetv3("small", include_preprocessing=False, **kw),
    "mobilenetv4_conv_small": lambda **kw: create_mobilenetv4("conv_small", **kw),
    "mobilenetv4_conv_medium": lambda **kw: create_mobilenetv4("conv_medium", **kw),
    "mobilenetv4_hybrid_medium": lambda **kw: create_mobilenetv4("hybrid_medium", **kw),
}
# conv_large and hybrid_large go through the same loader (`load_timm_state_dict`)
# in test_mobilenet_v4.py's logit checks; a file of theirs adds 4-11 s per backend.


def save_timm_safetensors(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@functools.cache
def timm_checkpoint(name, directory):
    ref = calibrated_timm_model(name, SIZE)
    return ref, save_timm_safetensors(ref, os.path.join(directory, f"{name}.safetensors"))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("checkpoints"))


class NotWeights:
    """An arbitrary object: `torch.load(weights_only=True)` must refuse it."""


@pytest.mark.parametrize("name", once_except(TIMM_MODELS, EVERY_BACKEND, ONCE))
def test_timm_safetensors_logits(name, ckpt_dir):
    ref, path = timm_checkpoint(name, ckpt_dir)
    model = TIMM_MODELS[name](
        weights=path, input_shape=(SIZE, SIZE, 3), classifier_activation=None, dropout_rate=0.0
    )
    x = random_images(2, SIZE, SIZE, seed=7)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(infer(model, x), expected)


@FILES_ONCE
def test_timm_pth_read_weights_only(ckpt_dir, tmp_path):
    import torch

    ref, _ = timm_checkpoint("mobilenetv4_conv_small", ckpt_dir)
    path = str(tmp_path / "ckpt.pth")
    torch.save({"state_dict": ref.state_dict()}, path)
    model = create_mobilenetv4("conv_small", weights=path, input_shape=(SIZE, SIZE, 3),
                               classifier_activation=None)
    x = random_images(1, SIZE, SIZE)
    assert_matches_reference(infer(model, x), timm_forward(ref, x))

    torch.save({"state_dict": ref.state_dict(), "extra": NotWeights()}, path)
    with pytest.raises(ValueError, match="unchanged"):
        create_mobilenetv4("conv_small", weights=path, input_shape=(SIZE, SIZE, 3))


@FILES_ONCE
def test_timm_weights_without_top_drop_the_head(ckpt_dir):
    ref, path = timm_checkpoint("mobilenetv4_hybrid_medium", ckpt_dir)
    model = create_mobilenetv4("hybrid_medium", weights=path, include_top=False,
                               input_shape=(SIZE, SIZE, 3))
    x = random_images(1, SIZE, SIZE)
    import torch

    with torch.no_grad():
        features = ref.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert_matches_reference(infer(model, x), features.transpose(0, 2, 3, 1))


KERAS_REFS = {
    "v1": (lambda top: keras.applications.MobileNet(input_shape=(SIZE, SIZE, 3), alpha=0.5,
                                                    include_top=top, weights=None),
           lambda **kw: create_mobilenetv1("0.5", **kw)),
    "v2": (lambda top: keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35,
                                                      include_top=top, weights=None),
           lambda **kw: create_mobilenetv2("0.35", **kw)),
    "v3": (lambda top: keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3),
                                                           include_top=top, weights=None),
           lambda **kw: create_mobilenetv3("small", **kw)),
}


def save_legacy_h5(model, path):
    """Write weights the way keras.applications' published `.h5` files are laid out."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.mark.parametrize("version, top", once_except(
    [(version, top) for top in ("top", "no_top") for version in KERAS_REFS], EVERY_BACKEND, ONCE))
def test_keras_applications_h5_logits(version, top, tmp_path):
    top = top == "top"
    ref_fn, ours_fn = KERAS_REFS[version]
    ref = randomize_keras_model(ref_fn(top))
    path = save_legacy_h5(ref, str(tmp_path / f"{version}.h5"))
    model = ours_fn(weights=path, include_top=top, input_shape=(SIZE, SIZE, 3))
    x = random_images(2, SIZE, SIZE, low=0 if version == "v3" else -1, high=255 if version == "v3" else 1)
    assert_matches_reference(infer(model, x), infer(ref, x))


@FILES_ONCE
def test_keras_h5_with_top_loads_into_model_without_top(tmp_path):
    ref = randomize_keras_model(keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None))
    path = save_legacy_h5(ref, str(tmp_path / "v2.h5"))
    model = create_mobilenetv2("0.35", weights=path, include_top=False, input_shape=(SIZE, SIZE, 3))
    features = keras.Model(ref.input, ref.get_layer("out_relu").output)
    x = random_images(1, SIZE, SIZE)
    assert_matches_reference(infer(model, x), infer(features, x))


def weights_snapshot(model):
    return [to_numpy(w).copy() for w in model.weights]


def assert_unchanged(model, snapshot):
    assert all(np.array_equal(to_numpy(w), s) for w, s in zip(model.weights, snapshot))


@FILES_ONCE
def test_bad_files_raise_and_leave_model_unchanged(ckpt_dir, tmp_path):
    from keras_mobilenets.weights import load_file

    model = create_mobilenetv4("conv_small", input_shape=(SIZE, SIZE, 3))
    before = weights_snapshot(model)
    _, good = timm_checkpoint("mobilenetv4_conv_small", ckpt_dir)
    _, other = timm_checkpoint("mobilenetv4_conv_medium", ckpt_dir)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights")
    cases = [
        (str(truncated), ValueError, "truncated, corrupt"),
        (str(garbage), ValueError, "truncated, corrupt"),
        (str(empty), ValueError, "is empty"),
        (str(text), ValueError, "truncated, corrupt"),
        (other, ValueError, "Shape mismatch|no tensor|does not use"),
        (str(tmp_path / "missing.safetensors"), FileNotFoundError, "does not exist"),
    ]
    for path, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            load_file(model, path)
        assert_unchanged(model, before)


@FILES_ONCE
def test_mismatch_found_after_partial_match_leaves_model_unchanged(ckpt_dir, tmp_path):
    # All tensors but the classifier fit: nothing may be written.
    from safetensors.numpy import load_file as read
    from safetensors.numpy import save_file

    from keras_mobilenets.weights import load_file

    _, good = timm_checkpoint("mobilenetv3_small_100", ckpt_dir)
    state = read(good)
    state["classifier.weight"] = np.zeros((10, 1024), "float32")
    state["classifier.bias"] = np.zeros((10,), "float32")
    path = str(tmp_path / "ten_classes.safetensors")
    save_file(state, path)
    model = create_mobilenetv3("small", style="timm", input_shape=(SIZE, SIZE, 3))
    before = weights_snapshot(model)
    with pytest.raises(ValueError, match="classifier"):
        load_file(model, path)
    assert_unchanged(model, before)


@FILES_ONCE
def test_imagenet_errors_before_any_download():
    with pytest.raises(ValueError, match="1000-class classifier but num_classes=10"):
        create_mobilenetv4("conv_small", weights="imagenet", num_classes=10)
    with pytest.raises(ValueError, match="No ImageNet weights .* width=0.6"):
        create_mobilenetv2("1.0", width_multiplier=0.6, weights="imagenet")
    with pytest.raises(ValueError, match="conv_medium.*requested variant='conv_small'"):
        create_mobilenetv4("conv_small", weights="mobilenetv4_conv_medium.e500_r256_in1k")
    with pytest.raises(ValueError, match="needs style='timm'"):
        create_mobilenetv4("conv_small", weights="mobilenetv4_conv_small.e2400_r224_in1k",
                           style="keras")
    with pytest.raises(ValueError, match="Unknown weights 'imagenet21k'"):
        create_mobilenetv4("conv_small", weights="imagenet21k")
    with pytest.raises(TypeError, match="weights must be None"):
        create_mobilenetv4("conv_small", weights=3)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@FILES_ONCE
def test_download_checks_hash_and_never_caches_a_bad_file(
    http_server, ckpt_dir, tmp_path, monkeypatch
):
    root, base = http_server
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERAS_MOBILENETS_CACHE", str(cache))
    ref, path = timm_checkpoint("mobilenetv4_conv_small", ckpt_dir)
    data = open(path, "rb").read()
    (root / "model.safetensors").write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()

    bad = register_checkpoint(Checkpoint(
        "test/conv_small_bad_hash", "v4", "conv_small", 1.0, "timm", "timm",
        url=f"{base}/model.safetensors", file_hash="0" * 64))
    with pytest.raises(ValueError, match="hash does not match"):
        create_mobilenetv4("conv_small", weights=bad.name, input_shape=(SIZE, SIZE, 3))
    assert not any(cache.glob("*conv_small_bad_hash*"))

    good = register_checkpoint(Checkpoint(
        "test/conv_small_good", "v4", "conv_small", 1.0, "timm", "timm",
        url=f"{base}/model.safetensors", file_hash=sha256))
    model = create_mobilenetv4("conv_small", weights=good.name, input_shape=(SIZE, SIZE, 3),
                               classifier_activation=None)
    x = random_images(1, SIZE, SIZE)
    assert_matches_reference(infer(model, x), timm_forward(ref, x))
    cached = list(cache.glob("*conv_small_good*"))
    assert len(cached) == 1
    # A second build uses the cache: the server no longer has the file.
    (root / "model.safetensors").unlink()
    again = create_mobilenetv4("conv_small", weights=good.name, input_shape=(SIZE, SIZE, 3),
                               classifier_activation=None)
    assert max_abs_diff(infer(again, x), infer(model, x)) == 0.0


@FILES_ONCE
def test_converter_writes_loadable_weights(ckpt_dir, tmp_path):
    ref, path = timm_checkpoint("mobilenetv3_large_100", ckpt_dir)
    out = str(tmp_path / "v3l.weights.h5")
    assert convert_main(["--version", "v3", "--variant", "large", "--style", "timm",
                         "--source", path, "--output", out]) == 0
    model = create_mobilenetv3("large", style="timm", include_preprocessing=False,
                               weights=out, input_shape=(SIZE, SIZE, 3),
                               classifier_activation=None, dropout_rate=0.0)
    x = random_images(1, SIZE, SIZE)
    assert_matches_reference(infer(model, x), timm_forward(ref, x))


@FILES_ONCE
def test_checkpoint_preprocessing_is_exposed():
    ckpt = get_checkpoint("timm/mobilenetv4_conv_medium.e500_r256_in1k")
    assert ckpt is get_checkpoint("mobilenetv4_conv_medium.e500_r256_in1k")
    assert ckpt.preprocessing() == dict(input_size=256, crop_pct=0.95, interpolation="bicubic",
                                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert get_checkpoint("timm/mobilenetv1_100.ra4_e3600_r224_in1k").mean == (0.5, 0.5, 0.5)
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    np.testing.assert_allclose(to_numpy(v1_preprocess(x)), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(to_numpy(v4_preprocess(x)), expected, rtol=1e-5)


@FILES_ONCE
def test_v3_in_model_preprocessing_follows_the_checkpoint():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    keras_style = to_numpy(preprocessing_layer(None)(x))
    np.testing.assert_allclose(keras_style, [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    ckpt = get_checkpoint("timm/mobilenetv3_large_100.ra_in1k")
    mean, std = np.array(ckpt.mean), np.array(ckpt.std)
    np.testing.assert_allclose(
        to_numpy(preprocessing_layer(ckpt)(x)), (x / 255.0 - mean) / std, rtol=1e-5
    )
