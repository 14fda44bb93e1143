"""Python scripts run in background processes beside the suite: a fresh
process per backend (its environment), started early and waited for by the
test that reads its output."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    if backend == "jax":
        # Unoptimised XLA compiles the forward passes and the train step
        # of the tests (test_export.py) about twice as fast, with the same
        # outputs to float32 rounding.
        flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    return env


def start(script, args, env):
    return subprocess.Popen(
        [sys.executable, "-c", script, ROOT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, what):
    """Wait for a background process; its stdout, or a failure with its stderr."""
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"
    return out
