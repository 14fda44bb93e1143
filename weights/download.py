"""Download one checkpoint file into the cache: atomically, with a timeout,
hash-checked where a hash is known, and with errors that say what to do.

The file is written under a temporary name in the cache folder and renamed
onto its final name only once complete (and hash-checked), so two processes
fetching the same checkpoint at once, or a download killed half-way, never
leave a partial file under the name later loads read.
"""

import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

TIMEOUT_ENV = "KERAS_MOBILENETS_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 16


class WeightsDownloadError(OSError):
    """A checkpoint could not be downloaded: no network, a stalled or cut
    connection, or an HTTP error. The message names the URL and where to put
    the file by hand for offline use."""


def download_timeout():
    """Seconds without data before a download is abandoned
    (`$KERAS_MOBILENETS_DOWNLOAD_TIMEOUT`, default 60)."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}.")
    return seconds


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path, file_hash):
    """Whether `path` has `file_hash` (sha256 if 64 hex digits, else md5)."""
    algorithm = "sha256" if len(file_hash) == 64 else "md5"
    return file_digest(path, algorithm) == file_hash.lower()


class _Progress:
    """Download progress on stderr: a bar on a terminal, else two lines."""

    def __init__(self, url, total, stream=None):
        self.stream = stream or sys.stderr
        self.total = total
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0
        size = f" ({total / 1e6:.1f} MB)" if total else ""
        self.stream.write(f"Downloading {url}{size}\n")
        self.stream.flush()

    def update(self, done, final=False):
        now = time.monotonic()
        if not self.tty or (not final and now - self.last < 0.2):
            return
        self.last = now
        if self.total:
            filled = int(30 * done / self.total)
            bar = "=" * filled + ">" * (filled < 30) + "." * (29 - filled)
            line = f"\r{done / 1e6:8.1f}/{self.total / 1e6:.1f} MB [{bar}] {100 * done // self.total:3d}%"
        else:
            line = f"\r{done / 1e6:8.1f} MB"
        self.stream.write(line)
        self.stream.flush()

    def close(self, done):
        self.update(done, final=True)
        self.stream.write(("\n" if self.tty else "") + f"  {done / 1e6:.1f} MB downloaded\n")
        self.stream.flush()


def _offline_hint(target):
    return (
        f"To use these weights without a connection, download that URL elsewhere and save "
        f"the file as {target} (file name {os.path.basename(target)!r}; the cache folder is "
        "$KERAS_MOBILENETS_CACHE, else ~/.keras/keras_mobilenets)."
    )


def _copy(url, out, timeout, progress):
    """Stream `url` into the open file `out`; returns the byte count."""
    request = urllib.request.Request(url, headers={"User-Agent": "keras-mobilenets"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _Progress(url, total) if progress else None
        done = 0
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if bar:
                bar.update(done)
        if bar:
            bar.close(done)
    if total is not None and done != total:
        raise WeightsDownloadError(
            f"The download of {url} was cut short: {done} of {total} bytes arrived."
        )
    return done


def _remove_stale_parts(directory, name, age_s=3600):
    """Delete partial downloads of `name` left by killed processes (an hour
    without a write; a live download writes or times out well before)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if entry.startswith(f".{name}.") and entry.endswith(".part"):
            path = os.path.join(directory, entry)
            try:
                if now - os.path.getmtime(path) > age_s:
                    os.remove(path)
            except OSError:
                pass


def fetch_url(url, target, file_hash=None, progress=True):
    """`target`, downloaded from `url` first unless a good copy is there.

    A cached file with a known hash is checked, and fetched again if it
    does not match. A download that fails (network error, no data for
    `download_timeout()` seconds, fewer bytes than announced, wrong hash)
    leaves nothing under `target`.

    Raises:
        WeightsDownloadError: the file could not be downloaded.
        ValueError: the downloaded file does not match `file_hash`.
    """
    if os.path.exists(target):
        if file_hash is None or hash_matches(target, file_hash):
            return target
        print(f"{target} does not match its hash {file_hash}; downloading it again.",
              file=sys.stderr)
    directory = os.path.dirname(os.path.abspath(target))
    timeout = download_timeout()
    _remove_stale_parts(directory, os.path.basename(target))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, partial = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".part", dir=directory
        )
    except OSError as e:
        raise WeightsDownloadError(
            f"Cannot write to the weights cache {directory} ({e}); set KERAS_MOBILENETS_CACHE "
            "to a writable folder."
        ) from e
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _copy(url, out, timeout, progress)
            except WeightsDownloadError as e:
                raise WeightsDownloadError(f"{e} {_offline_hint(target)}") from None
            except TimeoutError as e:
                raise WeightsDownloadError(
                    f"The download of {url} stalled: no data for {timeout:g} s ({TIMEOUT_ENV} "
                    f"sets the limit). {_offline_hint(target)}"
                ) from e
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise WeightsDownloadError(
                    f"Could not download {url} ({type(e).__name__}: {reason}). "
                    f"{_offline_hint(target)}"
                ) from e
        if file_hash is not None and not hash_matches(partial, file_hash):
            raise ValueError(
                f"Downloaded {url} but its hash does not match {file_hash}; the file was "
                "discarded."
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target
