"""The installed package: one import root, dependencies pointing one way,
old `.keras` files still loading, reference names read from declarations."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import BACKEND, calibrated_timm_model, infer, to_numpy

import keras_mobilenets
from keras_mobilenets import create_mobilenetv4
from keras_mobilenets.layers import declare
from keras_mobilenets.weights import load_timm_state_dict

ROOT = Path(keras_mobilenets.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"


# User modules named `layers` / `weights` beside a script: test_train.py (in the
# fresh process that loads a trained model).


@pytest.mark.skipif(BACKEND != "torch", reason="backend-independent; built once, on torch")
def test_wheel_installs_one_package_and_the_documented_modules(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", "benchmarks", "tests", "examples"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"keras_mobilenets", *(f"mobilenet_v{i}.py" for i in range(1, 6))}
    assert "keras_mobilenets/layers/conv_bn_act.py" in names
    assert not any(n.startswith(("keras_mobilenets/tests/", "keras_mobilenets/benchmarks/"))
                   for n in names)


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize(
    "folder, allowed",
    [("layers", ()), ("weights", ("keras_mobilenets.layers",))],
)
def test_dependencies_point_one_way(folder, allowed):
    # factories -> builder -> layers; weights -> layers; nothing back up.
    for path in (ROOT / folder).glob("*.py"):
        for module in _imports(path):
            if module.startswith("keras_mobilenets"):
                assert module.startswith(allowed), f"{path.name} imports {module}"
            assert module.split(".")[0] not in ("layers", "weights", "mobilenet_common"), (
                f"{path.name} imports top-level {module}"
            )


def test_keras_file_saved_before_the_package_move_still_loads():
    # blocks_v0.1.keras: every block layer, saved by version 0.1 (top-level
    # `layers` package), with its inputs and outputs.
    model = keras.models.load_model(FIXTURES / "blocks_v0.1.keras")
    data = np.load(FIXTURES / "blocks_v0.1.npz")
    np.testing.assert_allclose(infer(model, data["x"]), data["y"], atol=1e-5)


def test_timm_loader_reads_the_declared_names():
    ref = calibrated_timm_model("mobilenetv4_conv_small", 64)
    model = create_mobilenetv4("conv_small", input_shape=(64, 64, 3))
    before = [to_numpy(w) for w in model.weights]
    declare(model.get_layer("stage2_block0").expand.conv, timm="pw_renamed.conv")
    with pytest.raises(ValueError, match=r"blocks\.2\.0\.pw_renamed\.conv\.weight"):
        load_timm_state_dict(model, ref.state_dict())
    assert all(np.array_equal(a, to_numpy(w)) for a, w in zip(before, model.weights))
    declare(model.get_layer("stage2_block0").expand.conv, timm="pw_exp.conv")
    load_timm_state_dict(model, ref.state_dict())
    np.testing.assert_array_equal(
        to_numpy(model.get_layer("stem").conv.kernel),
        ref.conv_stem.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
