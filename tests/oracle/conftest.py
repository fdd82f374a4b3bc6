"""Shared fixtures for the oracle tests: the logitfuse binary and a runner that checks exit codes."""
import contextlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))


def run_logitfuse(*args, expect=0, cwd=None):
    """Runs logitfuse; fails the test (showing stderr) unless the exit code is `expect`."""
    proc = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != expect:
        raise AssertionError(
            f"logitfuse {' '.join(map(str, args))} exited {proc.returncode}, expected {expect}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def logitfuse():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run scripts/setup.sh first")
    return run_logitfuse


@contextlib.contextmanager
def small_filesystem(path, kib):
    """A tmpfs of `kib` KiB mounted at `path` (created) for the block: a disk that fills up. Skips the
    test where mounting is not allowed; unmounted whatever happens."""
    Path(path).mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(kib)}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield Path(path)
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


REAL_MODELS = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse")) / "models"


@pytest.fixture(scope="session")
def real_models():
    """The pretrained checkpoints scripts/fetch-models.sh writes (scripts/test.sh runs it first).
    Skips where it could not reach the package index (LOGITFUSE_REAL_MODELS_UNREACHABLE holds why);
    fails where the models should be there and are not."""
    names = ["smollm2-135m-instruct", "gemma-3-270m"]
    missing = [n for n in names if not (REAL_MODELS / n / "SOURCE.json").exists()]
    if missing:
        reason = os.environ.get("LOGITFUSE_REAL_MODELS_UNREACHABLE")
        if reason:
            pytest.skip(f"real models not fetched: {reason}")
        pytest.fail(f"{REAL_MODELS / missing[0]} is missing: run scripts/fetch-models.sh")
    return {n: REAL_MODELS / n for n in names}
