"""The fixed reference model every latency is normalised to, and its per-host baseline.

The reference is a mid-size ``mobile-cnn`` member (squeeze-excite, hard-swish, 5x5
depthwise): candidate-like, so a host's speed mode slows it as it slows candidates
(it cancelled modes better than a tiny model or a one-op graph; docs/benchmarks.md).
It is exported once per input shape into the cache folder.

The baseline is the reference's time in the host's fast mode, calibrated once per
host and setting (``LatencyKey``), reference file and burst length, and kept in a
JSON file under the cache folder so every process on the host uses the same one.
A later request for a longer calibration extends it; a file lock keeps two processes
from calibrating at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from odnas.cost.protocol import Modes, Run, baseline_ms, calibrate, modes
from odnas.records import LatencyKey
from odnas.rundir import read_json, write_json_atomic

#: Bump when the reference's architecture changes: baselines of another version never mix.
REFERENCE_VERSION = "odnas-latref-1"
REFERENCE_PARAMS = dict(stem_width=16, s1_depth=2, s1_width=16, s2_depth=1, s2_width=24, s3_depth=1,
                        s3_width=32, kernel=5, expand=2, se=1, hardswish=1, lr=0.01, epochs=1, batch_size=32)
REFERENCE_CLASSES = 10


def cache_root() -> Path:
    """odnas's per-user cache (``ODNAS_CACHE_DIR``, else ``~/.cache/odnas``)."""
    return Path(os.environ.get("ODNAS_CACHE_DIR") or Path.home() / ".cache" / "odnas")


def reference_onnx(input_shape: Sequence[int]) -> Path:
    """The reference model for inputs of ``input_shape`` (C, H, W), exported on first use."""
    shape = tuple(int(d) for d in input_shape)
    path = cache_root() / "reference" / f"{REFERENCE_VERSION}-{'x'.join(map(str, shape))}.onnx"
    if path.is_file():
        return path
    import torch

    from odnas.cost.onnx import export_onnx
    from odnas.spaces import get_space

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = get_space("mobile-cnn").build(REFERENCE_PARAMS, shape, REFERENCE_CLASSES)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        export_onnx(model, shape, Path(tmp) / path.name)
        os.replace(Path(tmp) / path.name, path)  # another process may have raced us: same bytes
    return path


@dataclass(frozen=True)
class Baseline:
    """The reference's fast-mode time on this host (ms per batch) and what it came from."""

    ms: float
    reference_id: str  # the reference file's sha256, first 12 hex digits
    seconds: float  # calibration time behind it
    modes: Modes
    path: str  # the cache file
    reference_path: str  # the reference ONNX file it was timed on

    def to_dict(self) -> dict:
        return {"ms": self.ms, "reference_id": self.reference_id, "seconds": self.seconds,
                "modes": dataclasses.asdict(self.modes)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def baseline(key: LatencyKey, ref_path: Path, open_reference: Callable[[], Run], *, calibration_s: float,
             burst_runs: int, warmup_runs: int, clock: Callable[[], int] = time.perf_counter_ns) -> Baseline:
    """The cached baseline for ``key`` and this reference, calibrated (or extended) to at
    least ``calibration_s`` seconds first if the cache holds less."""
    ref_id = _sha(ref_path)
    ident = {**dataclasses.asdict(key), "reference": ref_id, "burst_runs": burst_runs}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "reference" / f"baseline-{key.host}-{digest}.json"
    with _locked(path):
        rec = read_json(path)
        if not isinstance(rec, dict) or rec.get("key") != ident:
            rec = {"key": ident, "bursts": [], "seconds": 0.0}
        missing = calibration_s - float(rec["seconds"])
        if missing > 0.05 or not rec["bursts"]:
            rec["bursts"] += calibrate(open_reference, max(missing, 0.05), burst_runs=burst_runs,
                                       warmup_runs=warmup_runs, clock=clock)
            rec["seconds"] = float(rec["seconds"]) + max(missing, 0.05)
            rec["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            write_json_atomic(path, rec)
    return Baseline(ms=baseline_ms(rec["bursts"]), reference_id=ref_id, seconds=float(rec["seconds"]),
                    modes=modes(rec["bursts"]), path=str(path), reference_path=str(ref_path))
