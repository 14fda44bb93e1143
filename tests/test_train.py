"""`keras-mobilenets train` / `predict` on the current backend: a real run
killed with SIGKILL and resumed, its report and exports, `predict`, a fresh
process loading the saved model, and bad inputs refused before anything is
written.

Cheap by design: 32 px images, 2 classes of 12 images, MobileNetV1 0.25.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest
from conftest import run_once
from PIL import Image

from keras_mobilenets import cli, predict, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
MODEL = "v1_0.25"
EPOCHS = 4
COLORS = {"blue": (40, 60, 200), "red": (200, 50, 40)}


def make_images(root, per_class=12, size=32, seed=0, colors=COLORS):
    rng = np.random.default_rng(seed)
    for name, color in colors.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            image = np.clip(rng.normal(0, 30, (size, size, 3)) + color, 0, 255).astype("uint8")
            Image.fromarray(image).save(os.path.join(root, name, f"{i:02d}.png"))
    return str(root)


def run_args(data, out, *extra):
    return [data, "--model", MODEL, "--weights", "none", "--epochs", str(EPOCHS),
            "--batch-size", "4", "--image-size", "32", "--out", out, *extra]


def read_rows(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def backed_up_epoch(run_dir):
    try:
        with open(os.path.join(run_dir, "backup", "all", "training_metadata.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


# The command's resume logic, report and files are backend-neutral; a killed
# and resumed run costs 17 s on torch, 38 s on JAX and 50 s on TensorFlow.
WORKFLOW = run_once("training (test_models.py, test_robustness.py), export (test_export.py) and "
                    "int8 files (test_quantize.py) run on every backend")


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A run SIGKILLed after its first epoch was logged and backed up, then
    resumed by the same command (in this process)."""
    tmp = tmp_path_factory.mktemp("train")
    data = make_images(tmp / "data")
    # A separate validation folder: every DATA_DIR image trains (the split
    # without one is `train.split`, tested below).
    val = make_images(tmp / "val", per_class=3, seed=1)
    out = str(tmp / "run")
    export = ["--export", "keras_int8", "onnx"]
    args = run_args(data, out, "--val-dir", val, *export)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=BACKEND)
    log = open(tmp / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "keras_mobilenets.train", *args],
                               cwd=str(tmp), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    first_row = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if backed_up_epoch(out) >= 1 and os.path.exists(os.path.join(out, "log.csv")):
                rows = read_rows(out)
                if rows:
                    first_row = rows[0]
                    break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        log.close()
    killed_log = open(tmp / "killed.log").read()
    assert first_row is not None, killed_log[-3000:]
    assert process.returncode == -signal.SIGKILL
    killed_rows = read_rows(out)
    assert not os.path.exists(os.path.join(out, "report.md"))
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train.train(train.parse_args(args))
    result["quantize_warnings"] = [str(w.message) for w in caught if "quantize" in str(w.message)]
    return dict(out=out, data=data, first_row=first_row, killed_rows=killed_rows,
                result=result, resume_s=time.monotonic() - started, tmp=tmp)


@WORKFLOW
def test_killed_run_resumes_without_repeating_or_losing_epochs(resumed_run):
    rows = read_rows(resumed_run["out"])
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    # Epoch 0 ran once: its row is the one written before the kill.
    assert rows[0] == resumed_run["first_row"]
    assert len(resumed_run["killed_rows"]) < EPOCHS
    assert resumed_run["result"]["epochs"] == EPOCHS
    assert not os.path.exists(os.path.join(resumed_run["out"], "backup"))


@WORKFLOW
def test_report_curves_confusion_and_export(resumed_run):
    out = resumed_run["out"]
    for name in ("report.md", "curves.png", "confusion.png", "best.keras", "classes.json",
                 "config.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not [n for n in os.listdir(out) if "partial" in n]
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    # All 24 DATA_DIR images train; the 6 --val-dir images validate.
    assert "24 training and 6 validation images" in report
    assert "| blue | 3 |" in report and "| red | 3 |" in report
    assert "(resumed)" in report
    assert "## Exported models" in report
    exports = {e["format"]: e for e in resumed_run["result"]["exports"]}
    assert set(exports) == {"keras_int8", "onnx"}
    for fmt, e in exports.items():
        assert os.path.getsize(os.path.join(out, e["file"])) == e["bytes"] > 0
        assert f"| {fmt} | {e['file']} |" in report
        assert e["agreement"] >= 0.75, fmt  # decides as Keras does (6 images)
    assert resumed_run["result"]["quantize_warnings"] == []
    # int8 weights: the file is well under the float model's.
    assert exports["keras_int8"]["bytes"] < 0.5 * os.path.getsize(os.path.join(out, "best.keras"))
    with open(os.path.join(out, "classes.json")) as f:
        assert json.load(f)["classes"] == ["blue", "red"]


@WORKFLOW
def test_finished_run_is_never_overwritten(resumed_run, capsys):
    out = resumed_run["out"]
    before = open(os.path.join(out, "report.md")).read()
    assert train.main(run_args(resumed_run["data"], out)) == 2
    assert "finished run" in capsys.readouterr().err
    assert open(os.path.join(out, "report.md")).read() == before


@WORKFLOW
def test_predict_prints_top_classes(resumed_run, capsys):
    model = os.path.join(resumed_run["out"], "best.keras")
    images = [os.path.join(resumed_run["data"], c, "00.png") for c in ("blue", "red")]
    assert cli.main(["predict", model, *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and lines[3] == images[1]
    assert {line.split()[1] for line in lines[1:3]} == {"blue", "red"}
    probabilities = [float(line.split()[0]) for line in lines[1:3]]
    assert abs(sum(probabilities) - 1) < 1e-3 and probabilities[0] >= probabilities[1]
    assert predict.main([model, os.path.join(resumed_run["data"], "missing.png")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fresh_process(resumed_run):
    """A fresh process in a user's project folder, whose own `layers.py` and
    `weights.py` must not shadow ours (ML projects often have both): it
    loads the run's saved model after `import keras_mobilenets` and builds
    two models through the documented imports. One process for both checks
    (a fresh process spends 10-15 s importing the libraries)."""
    project = resumed_run["tmp"] / "project"
    project.mkdir()
    for name in ("layers", "weights"):
        (project / f"{name}.py").write_text(f"raise ImportError('user {name}.py imported')\n")
    (project / "main.py").write_text(textwrap.dedent("""
        import sys
        import keras
        import numpy as np
        import keras_mobilenets  # registers the layers (README: import it first)

        model = keras.saving.load_model(sys.argv[1])
        print("loaded", model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape)

        from keras_mobilenets import create_mobilenetv3
        from mobilenet_v4 import create_mobilenetv4

        a = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=3)
        b = create_mobilenetv4("conv_small", input_shape=(32, 32, 3), num_classes=4)
        x = np.zeros((1, 32, 32, 3), "float32")
        # Compiled on JAX, where an eager call compiles every op on its own.
        jax = keras.backend.backend() == "jax"
        run = (lambda m: m.predict_on_batch(x)) if jax else (lambda m: m(x))
        print("built", tuple(run(a).shape), tuple(run(b).shape))
    """))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=BACKEND)
    model = os.path.join(resumed_run["out"], "best.keras")
    done = subprocess.run([sys.executable, "main.py", model], capture_output=True, text=True,
                          env=env, cwd=str(project), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


@WORKFLOW
def test_saved_model_loads_in_a_fresh_process_after_import(fresh_process):
    assert "loaded (1, 2)" in fresh_process
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "needs\n`import keras_mobilenets` first" in readme or \
        "needs `import keras_mobilenets` first" in " ".join(readme.split())


@WORKFLOW
def test_user_layers_and_weights_modules_do_not_shadow_ours(fresh_process):
    assert fresh_process[-1] == "built (1, 3) (1, 4)"


# ------------------------------------------------------------- bad inputs


def refused(capsys, argv, needle, out):
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not os.path.exists(out), "something was written"
    return err


def test_bad_data_folders_are_refused_before_anything_is_written(tmp_path, capsys):
    out = str(tmp_path / "run")
    refused(capsys, run_args(str(tmp_path / "nowhere"), out), "does not exist", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, run_args(str(empty), out), "has no class subfolders", out)
    loose = tmp_path / "loose"
    make_images(loose, per_class=1)
    for name in COLORS:  # images, but not in class folders
        os.replace(loose / name / "00.png", loose / f"{name}.png")
        os.rmdir(loose / name)
    refused(capsys, run_args(str(loose), out), "move them into one subfolder per class", out)
    single = make_images(tmp_path / "single", per_class=3, colors={"cat": (0, 0, 0)})
    refused(capsys, run_args(single, out), "a single class ('cat')", out)
    unreadable = make_images(tmp_path / "unreadable", per_class=3)
    for name in os.listdir(os.path.join(unreadable, "red")):
        with open(os.path.join(unreadable, "red", name), "wb") as f:
            f.write(b"not a png")
    refused(capsys, run_args(unreadable, out), "no readable images in class folder(s) ['red']",
            out)


def test_bad_settings_are_refused(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_class=3)
    out = str(tmp_path / "run")
    refused(capsys, run_args(data, out, "--image-size", "16"), "at least 32", out)
    refused(capsys, run_args(data, out, "--model", "v4_tiny"), "v4_conv_small", out)
    refused(capsys, [data, "--freeze-epochs", "1", "--weights", "none", "--out", out],
            "needs pretrained", out)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad_out = str(blocker / "run")
    refused(capsys, run_args(data, bad_out), "Cannot write to --out", bad_out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert train.main(run_args(data, str(other))) == 2
    assert "not a run of this command" in capsys.readouterr().err
    assert os.listdir(other) == ["notes.txt"]
    if BACKEND != "tensorflow":
        refused(capsys, run_args(data, out, "--export", "litert"), "needs the TensorFlow", out)


def test_val_dir_with_other_classes_is_refused(tmp_path, capsys):
    data = make_images(tmp_path / "data", per_class=1)
    wrong = tmp_path / "wrong"
    make_images(wrong, per_class=1, colors={"blue": (0, 0, 200), "green": (0, 200, 0)})
    other = str(tmp_path / "other")
    refused(capsys, [data, "--val-dir", str(wrong), "--weights", "none", "--out", other],
            "but the training data has", other)


def test_non_image_and_corrupt_files_are_skipped_and_counted(tmp_path):
    data = make_images(tmp_path / "data", per_class=3)
    (tmp_path / "data" / "red" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = open(os.path.join(data, "blue", "00.png"), "rb").read()
    (tmp_path / "data" / "blue" / "cut.png").write_bytes(good[: len(good) // 2])
    folder = train.ImageFolder(data, 32)
    assert len(folder) == 6 and folder.images.shape == (6, 32, 32, 3)
    assert [os.path.basename(p) for p in folder.skipped] == ["notes.txt"]
    assert sorted(os.path.basename(p) for p, _ in folder.unreadable) == ["broken.png", "cut.png"]
    assert "skipped 1 non-image and 2 unreadable files" in folder.summary()
    train_part, val_part = train.split(folder, 0.2, seed=0)
    assert len(val_part) == 2 and sorted(val_part.labels.tolist()) == [0, 1]
    again, _ = train.split(folder, 0.2, seed=0)
    assert again.paths == train_part.paths  # the split is fixed by the seed


def test_digits_are_written_once_as_class_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_MOBILENETS_CACHE", str(tmp_path))
    folder = train.digits_folder()
    assert sorted(os.listdir(folder)) == [str(d) for d in range(10)] + ["COMPLETE"]
    assert sum(len(os.listdir(os.path.join(folder, str(d)))) for d in range(10)) == 1797
    first = os.path.join(folder, "0", sorted(os.listdir(os.path.join(folder, "0")))[0])
    stamp = os.stat(first).st_mtime_ns
    assert Image.open(first).size == (32, 32)
    assert train.digits_folder() == folder and os.stat(first).st_mtime_ns == stamp


def test_command_line_entry_points():
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    assert 'keras-mobilenets = "keras_mobilenets.cli:main"' in pyproject
    assert cli.main(["fly"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0


def test_normalization_follows_the_weights():
    assert train.input_normalization("v4", "conv_small", None) == ((0.5,) * 3, (0.5,) * 3)
    mean, std = train.input_normalization("v4", "conv_small", "imagenet")
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)
    assert train.input_normalization("v2", "1.0", "imagenet") == ((0.5,) * 3, (0.5,) * 3)
    name = "timm/mobilenetv3_large_100.ra_in1k"
    assert train.input_normalization("v3", "large", name)[0] == (0.485, 0.456, 0.406)
