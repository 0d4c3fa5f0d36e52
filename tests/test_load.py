"""The load benchmark's machinery: in-process jobs through the real loop and storage.

``run_loop`` runs unchanged (Ax Orchestrator, TrialRunner, metrics, SQLite); only
the training job runs in this process (``odnas.testing.InProcessJobs``), with the
fake latency backend, so eight trials take seconds. Sobol keeps the test fast; the
benchmark's 'bo' differs only in how candidates are made.
"""

import json

import pytest

from odnas.loop.config import SearchConfig
from odnas.loop.driver import create_run, run_loop
from odnas.loop.store import load_run, trial_table
from odnas.spaces import get_space
from odnas.testing import FakeLatencyBackend, InProcessJobs, synthetic_val_acc
from tests.conftest import run_cli


def test_in_process_trials_are_stored_and_read_back(tmp_path):
    import gc

    ended: list[int] = []
    frozen: list[int] = []  # objects out of the collector's sight while each job ended

    def after(index: int, seconds: float) -> None:
        ended.append(index)
        frozen.append(gc.get_freeze_count())

    jobs = InProcessJobs(after=after)
    cfg = SearchConfig(profile="cpu-mobile", space="mlp", trials=8, max_candidates=8, parallel=2,
                       run_dir=str(tmp_path / "run"), method="sobol", seed=0, threads=1,
                       scheduler=InProcessJobs.SCHEDULER)
    run_dir = create_run(cfg, schedulers=jobs.schedulers())
    # The in-process jobs reach the driver as a TorchX scheduler passed in by name.
    run_loop(run_dir, cost_backend=FakeLatencyBackend(), quiet=True, schedulers=jobs.schedulers())
    assert jobs.launched == 8 and sorted(ended) == list(range(8))
    # The loop ran with the imported libraries frozen (loop.ahead.frozen_heap), and handed them back.
    assert min(frozen) > 100_000 and gc.get_freeze_count() == 0

    run = load_run(run_dir)
    rows = trial_table(run.experiment, run_dir)  # read-only, from SQLite
    assert [r.trial for r in rows] == list(range(8))
    # load_run's rows are the driver's trials.json (no Ax to load): what SQLite holds
    assert run.as_of is not None and [r.trial for r in run.rows] == list(range(8))
    for seen, stored in zip(run.rows, rows):
        assert seen.replace(metrics={}, sem={}) == stored.replace(metrics={}, sem={})
        assert seen.metrics == pytest.approx(stored.metrics, rel=1e-8)  # Ax stores 10 decimals
    space = get_space("mlp")
    for r in rows:
        assert r.state == "completed", r
        # val_acc went job -> result.json -> ValAccMetric -> SQLite -> load_run unchanged
        assert r.metrics["val_acc"] == pytest.approx(synthetic_val_acc(space, r.params), abs=1e-9)
        assert r.metrics["latency_ms"] > 0 and r.metrics["num_params"] > 0
        tdir = run_dir / "trials" / f"{r.trial:04d}"
        assert json.loads((tdir / "result.json").read_text())["synthetic"] is True
        assert not (tdir / "torchx").exists()  # no TorchX job was started
    assert len({r.metrics["val_acc"] for r in rows}) > 1
    # The public read access: load_run's DataFrame is what `odnas status --format json|csv` prints.
    import io

    import pandas as pd

    df = load_run(run_dir).table()
    assert list(df["trial"]) == list(range(8)) and {"p.lr", "val_acc", "latency_ms", "sem.latency_ms"} <= set(df)
    def same(d):  # an empty column reads back as NaN, not None
        return d.astype(object).where(d.notna(), float("nan")).infer_objects()

    for fmt, read in (("json", pd.read_json), ("csv", pd.read_csv)):
        out = run_cli("status", str(run_dir), "--format", fmt, check=True).stdout
        pd.testing.assert_frame_equal(same(df), same(read(io.StringIO(out))[list(df.columns)]), check_dtype=False)
    # A user's own ax.api.Client loads the stored experiment as docs/plugins.md says (on a copy).
    import shutil

    from ax.api.client import Client
    from ax.api.configs import StorageConfig

    from odnas.loop.store import EXPERIMENT_NAME, registry_bundle

    copy = shutil.copytree(run_dir, tmp_path / "copy")
    client = Client.load_from_database(EXPERIMENT_NAME, storage_config=StorageConfig(
        url=f"sqlite:///{copy / 'experiment.sqlite'}", registry_bundle=registry_bundle()))
    assert len(client.summarize()) == 8
    stats = json.loads((run_dir / "driver-stats.jsonl").read_text().splitlines()[-1])
    assert stats["calls"]["deploy"] == 8 and stats["seconds"]["storage"] > 0  # the clock saw the loop
    # Candidates were made on the background thread while trials were pending, and each one
    # made ahead was deployed (none thrown away, none failed).
    ahead = stats["ahead"]
    assert ahead["made_ahead"] >= 1 and ahead["used"] == ahead["made_ahead"] and ahead["failed"] == 0


def test_synthetic_val_acc_is_deterministic_and_bounded():
    import random

    space = get_space("mobile-cnn-xl")
    rng = random.Random(0)
    params = [space.sample(rng) for _ in range(50)]
    values = [synthetic_val_acc(space, p) for p in params]
    assert values == [synthetic_val_acc(space, p) for p in params]
    assert all(0.55 <= v <= 0.98 for v in values) and max(values) - min(values) > 0.05
