"""The README's Python examples run as written."""

import os
import re

import pytest
from conftest import run_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(readme_blocks()) >= 3


@run_once("the factories and `fit` run on every backend in test_models.py")
def test_quick_start_runs():
    block = next(b for b in readme_blocks() if "create_mobilenetv1(variant=\"0.5\"" in b)
    namespace = {}
    exec(compile(block, "README quick start", "exec"), namespace)
    assert namespace["model"].output_shape == (None, 1000)
    assert namespace["backbone"].output_shape == (None, 8, 8, 960)


def test_transfer_learning_recipe_runs():
    # The recipe downloads ImageNet weights; here the backbone is built with
    # random weights instead (the download path is tested in test_weights.py).
    block = next(b for b in readme_blocks() if "feature_pyramid(" in b)
    assert 'weights="imagenet"' in block
    block = block.replace('weights="imagenet"', "weights=None")
    namespace = {}
    exec(compile(block, "README transfer learning", "exec"), namespace)
    outputs = namespace["pyramid"].output
    assert sorted(outputs) == ["stride_16", "stride_32", "stride_8"]
    assert namespace["model"].output_shape == (None, 5)


@pytest.mark.parametrize("needle", ["bash scripts/test_all.sh", "keras-mobilenets train"])
def test_commands_are_named(needle):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert needle in text
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "scripts/test_all.sh" in ci
