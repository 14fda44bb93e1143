"""Checkpoint downloads and loads as a new user meets them: offline, stalled,
cut short, two at once, a broken cache file, Ctrl-C during a load.

Every server here is a local HTTP server on 127.0.0.1 serving files made in
the test; nothing leaves the machine.
"""

import hashlib
import http.server
import os
import socket
import threading
import time

import keras
import numpy as np
import pytest
from conftest import randomize_keras_model

from keras_mobilenets import builder, create_mobilenetv1, create_mobilenetv3
from keras_mobilenets.weights import Checkpoint, loading, register_checkpoint
from keras_mobilenets.weights.download import WeightsDownloadError

SIZE = 32


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<name> serves `files[name]`; `mode` says how:
    "slow" (16 KiB chunks, 5 ms apart), "stall" (half, then silence),
    "cut" (announces the full length, sends half and closes)."""

    files = {}
    mode = "slow"
    stall_s = 5.0

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.mode == "slow":
            for i in range(0, len(data), 1 << 14):
                self.wfile.write(data[i : i + (1 << 14)])
                self.wfile.flush()
                time.sleep(0.005)
        elif self.mode == "stall":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(self.stall_s)
        else:  # "cut"
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True


# Download, cache and interrupt handling are plain Python and numpy: checked
# once, on the fastest backend.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="backend-independent; run on torch"
)

@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "mode": "slow"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("KERAS_MOBILENETS_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def v1_h5(tmp_path_factory):
    """A keras.applications-layout `.h5` for MobileNetV1 0.25 at 32 px (~2 MB)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.MobileNet(
        input_shape=(SIZE, SIZE, 3), alpha=0.25, include_top=True, weights=None
    )
    randomize_keras_model(ref)
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("h5") / "v1_025.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    x = rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype("float32")
    return path, x, keras.ops.convert_to_numpy(ref(x, training=False))


def _checkpoint(name, url, file_hash=None):
    return register_checkpoint(
        Checkpoint(f"test/{name}", "v1", None, 0.25, "keras", "keras", url=url,
                   file_hash=file_hash, input_size=SIZE)
    )


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_keyboard_interrupt_during_a_load_passes_through(tmp_path, monkeypatch):
    model = create_mobilenetv3("small", style="timm", input_shape=(SIZE, SIZE, 3))
    before = [np.array(w) for w in model.get_weights()]
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not read")

    def reader(_):
        model.weights[0].assign(np.zeros(model.weights[0].shape))  # half-way through
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "read_timm_file", reader)
    with pytest.raises(KeyboardInterrupt):
        loading.load_file(model, str(path))
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_offline_fails_before_building_and_says_where_to_put_the_file(cache, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/v1_025.h5"
    ckpt = _checkpoint("offline", url)

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the download")

    monkeypatch.setattr(builder.blocks, "ConvBnAct", never)
    with pytest.raises(WeightsDownloadError) as info:
        create_mobilenetv1("0.25", weights=ckpt.name, input_shape=(SIZE, SIZE, 3))
    assert isinstance(info.value, OSError)
    message = str(info.value)
    target = os.path.join(str(cache), "test__offline.h5")
    assert url in message and target in message and "'test__offline.h5'" in message
    assert not os.path.exists(target)


def test_stalled_download_times_out(server, cache, monkeypatch, v1_h5):
    handler, base = server
    handler.files["v1.h5"] = open(v1_h5[0], "rb").read()
    handler.mode, handler.stall_s = "stall", 3.0
    monkeypatch.setenv("KERAS_MOBILENETS_DOWNLOAD_TIMEOUT", "0.3")
    ckpt = _checkpoint("stalled", f"{base}/v1.h5")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match="stalled: no data for 0.3 s"):
        loading.download(ckpt)
    assert time.monotonic() - start < 2.5
    assert os.listdir(cache) == []  # no partial file either


def test_download_cut_short_is_not_cached(server, cache, v1_h5):
    handler, base = server
    handler.files["v1.h5"] = open(v1_h5[0], "rb").read()
    handler.mode = "cut"
    ckpt = _checkpoint("cut", f"{base}/v1.h5")
    os.makedirs(cache)
    stale = cache / ".test__cut.h5.abc123.part"  # left by a process killed long ago
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200,) * 2)
    with pytest.raises(WeightsDownloadError, match="cut short"):
        loading.download(ckpt)
    assert os.listdir(cache) == []


def test_two_concurrent_downloads_leave_one_complete_file(server, cache, v1_h5):
    path, x, expected = v1_h5
    data = open(path, "rb").read()
    handler, base = server
    handler.files["v1.h5"] = data
    ckpt = _checkpoint("concurrent", f"{base}/v1.h5")
    target = os.path.join(str(cache), "test__concurrent.h5")
    sizes, results, errors = set(), [], []
    done = threading.Event()

    def watch():  # whenever the final name exists, it holds the whole file
        while not done.is_set():
            if os.path.exists(target):
                sizes.add(os.path.getsize(target))
            time.sleep(0.001)

    barrier = threading.Barrier(2)

    def fetch():
        try:
            barrier.wait()
            results.append(loading.download(ckpt))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    watcher.join()
    assert not errors and results == [target, target]
    assert sizes <= {len(data)}
    assert hashlib.sha256(open(target, "rb").read()).digest() == hashlib.sha256(data).digest()
    assert sorted(os.listdir(cache)) == ["test__concurrent.h5"]  # no .part left
    model = create_mobilenetv1("0.25", weights=ckpt.name, input_shape=(SIZE, SIZE, 3))
    got = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_hash_is_checked_and_bad_download_discarded(server, cache, v1_h5):
    data = open(v1_h5[0], "rb").read()
    handler, base = server
    handler.files["v1.h5"] = data
    bad = _checkpoint("badhash", f"{base}/v1.h5", file_hash="0" * 64)
    with pytest.raises(ValueError, match="hash does not match"):
        loading.download(bad)
    assert os.listdir(cache) == []
    good = _checkpoint("goodhash", f"{base}/v1.h5", hashlib.md5(data).hexdigest())
    assert os.path.getsize(loading.download(good)) == len(data)


def test_truncated_cached_file_says_which_file_to_delete(cache, v1_h5):
    data = open(v1_h5[0], "rb").read()
    ckpt = _checkpoint("truncated", "http://127.0.0.1:9/unused.h5")
    os.makedirs(cache)
    target = os.path.join(str(cache), "test__truncated.h5")
    with open(target, "wb") as f:
        f.write(data[: len(data) // 2])  # what a crash mid-copy leaves
    with pytest.raises(ValueError, match=f"delete {target}"):
        create_mobilenetv1("0.25", weights=ckpt.name, input_shape=(SIZE, SIZE, 3))


def test_download_timeout_setting_is_checked(monkeypatch):
    from keras_mobilenets.weights.download import download_timeout

    monkeypatch.delenv("KERAS_MOBILENETS_DOWNLOAD_TIMEOUT", raising=False)
    assert download_timeout() == 60.0
    monkeypatch.setenv("KERAS_MOBILENETS_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="positive number of seconds"):
        download_timeout()
