import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"

# One cache for the whole test session (reference models, latency baselines, calibration
# figures), apart from the user's. pytest-xdist's workers and the tests' subprocesses (the
# CLI, jobs) inherit it from the process that made it, so a baseline is calibrated once
# per session, not once per worker (its file lock keeps two from calibrating at once).
# ODNAS_TEST_CACHE_DIR names it when set (a CI job may keep one between runs).
if "ODNAS_TEST_KEEP_CACHE" not in os.environ:
    import tempfile

    os.environ["ODNAS_CACHE_DIR"] = os.environ["ODNAS_TEST_CACHE_DIR"] = \
        os.environ.get("ODNAS_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="odnas-test-cache-")


def run_cli(*args: str, timeout: float = 600, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``odnas ARGS`` in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "odnas", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"odnas {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


#: What a command says on stderr once for this host or environment, whichever test runs it
#: first: notes, the host's first reference calibration, BoTorch's first kernel build.
ONCE_PREFIXES = ("odnas: note:", "odnas: timing this host's latency reference first",
                 "odnas: building BoTorch's acquisition kernel")


def told(stderr: str) -> list[str]:
    """The lines of ``stderr`` a test asserts on: all but the ``ONCE_PREFIXES`` ones."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith(ONCE_PREFIXES)]


def run_status(run_dir: Path, *args: str) -> str:
    """``odnas status RUN_DIR ARGS``'s output, run in this process: a read of a finished
    run that a test checks, where a fresh process would only add Ax's import (about 5 s).
    The CLI's own process (exit codes, one-line errors, output) is tested with ``run_cli``."""
    import contextlib
    import io

    from odnas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["status", str(run_dir), *args])
    if code != 0:
        raise AssertionError(f"odnas status {run_dir} failed ({code}):\n{out.getvalue()}\n{err.getvalue()}")
    return out.getvalue()


def status_json(run_dir: Path) -> dict:
    import json

    return json.loads(run_status(run_dir, "--json"))


@pytest.fixture
def short_profile():
    """cpu-mobile with a short measurement protocol, for fast tests."""
    from odnas.profiles import load_profile

    def make(name: str = "cpu-mobile"):
        p = load_profile(name)
        return dataclasses.replace(p, protocol=dataclasses.replace(
            p.protocol, warmup_runs=2, min_runs=5, min_time_s=0.0, max_time_s=0.5,
            sessions=2, rounds=2, burst_runs=5, calibration_s=0.5))

    return make


@pytest.fixture
def short_profile_file(short_profile, tmp_path):
    """A shipped profile with the short protocol, as a YAML file for ``--profile``."""
    import yaml

    def write(name: str = "cpu-mobile") -> Path:
        path = tmp_path / f"{name}-short.yaml"
        path.write_text(yaml.safe_dump(short_profile(name).to_dict()))
        return path

    return write
