"""The training job: ``python -m odnas.jobs.trial --out TRIAL_DIR --space S --params JSON ...``.

It is what TorchX launches on any scheduler. It writes into the trial dir:
``job.json`` (pid, host, start), TensorBoard curves, ``progress.jsonl``,
``model.pt`` (the checkpoint) and, last, ``result.json`` -- or ``error.json`` with
the reason when it fails. ``result.json`` is written atomically and only on success.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from odnas.rundir import (
    CHECKPOINT_NAME, COSTS_DIR, ERROR_NAME, JOB_NAME, RESULT_NAME, proc_start, read_json, write_json_atomic,
)

#: Data sets loaded in this process, by (name, dir, seed): a warm worker loads its own
#: once, before it forks, and every trial child reads it from here.
_DATA: dict[tuple, object] = {}


def parser(prog: str = "python -m odnas.jobs.trial") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--out", required=True, help="trial dir")
    ap.add_argument("--space", required=True)
    ap.add_argument("--params", required=True, help="parameters as JSON")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def main(argv: list[str] | None = None, worker: dict | None = None) -> int:
    """Run one trial. ``worker`` (slot, pid, token) is set when a warm worker's forked
    child runs it; it is recorded in ``job.json``."""
    a = parser().parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / JOB_NAME, {"pid": os.getpid(), "host": socket.gethostname(), "start": time.time(),
                                         "proc_start": proc_start(os.getpid()), "params": json.loads(a.params),
                                         **({"worker": worker} if worker else {})})
    try:
        result = run(out, a.space, json.loads(a.params), a.data, a.data_dir, a.data_seed, a.seed, a.threads)
    except BaseException as e:  # record every failure kind, then fail the job
        if not (out / ERROR_NAME).exists():  # the driver's reason (a timeout) comes first
            write_json_atomic(out / ERROR_NAME, {
                "reason": failure_text(e), "traceback": traceback.format_exc(), "time": time.time()})
        raise
    write_json_atomic(out / RESULT_NAME, result)
    return 0


def failure_text(e: BaseException) -> str:
    """One line on why a job failed; running out of memory is named as such, whether
    Python or torch's allocator reported it."""
    text = f"{type(e).__name__}: {e}".splitlines()[0][:400]
    if isinstance(e, MemoryError) or any(s in str(e) for s in ("can't allocate memory", "not enough memory",
                                                               "out of memory")):
        return f"out of memory: {text}"
    return text


def run(out: Path, space_name: str, params: dict, data: str, data_dir: str | None,
        data_seed: int, seed: int, threads: int) -> dict:
    import logging
    import warnings

    import torch

    torch.set_num_threads(max(1, threads))
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from odnas.data import load_data
    from odnas.spaces import get_space
    from odnas.jobs.train import fit

    space = get_space(space_name)
    key = (data, data_dir, data_seed)
    if key not in _DATA:
        _DATA[key] = load_data(data, data_dir, seed=data_seed)
    split = _DATA[key]
    torch.manual_seed(seed)
    model = space.build(params, split.input_shape, split.num_classes)
    hp = space.training(params)
    # The cost lane's figures for this architecture, from the run's cost cache, for TensorBoard.
    cost = read_json(out.parent.parent / COSTS_DIR / f"{space.arch_id(params)}.json") or {}
    costs = {k: v for k, v in (cost.get("metrics") or {}).items() if k in ("num_params", "flops", "model_bytes",
                                                                           "latency_ms")}
    res = fit(model, split, hp["lr"], hp["epochs"], hp["batch_size"], out, seed=seed, hparams=params, costs=costs)
    torch.save({"state_dict": model.state_dict(), "params": params, "space": space_name,
                "arch_id": space.arch_id(params)}, out / CHECKPOINT_NAME)
    return {**res, "arch_id": space.arch_id(params), "status": "ok"}


if __name__ == "__main__":
    sys.exit(main())
