"""Build a tabular benchmark: train every configuration of a small grid for real and
measure every architecture's costs, so that searches can be replayed without training.

A table is a full factorial grid over some of a space's parameters (the others held
fixed, like ``--fixed``). Each configuration is built with ``space.build`` and trained
in-process for a fixed number of epochs with several seeds, by a plain loop that
reproduces ``odnas.train.fit`` (same model, optimizer, batch order and seeding, without
Lightning's overhead). Each architecture's costs come from
``odnas.cost.lane.measure_candidate`` under the profile, measured in two passes (one
before training, one after) and the pass with the lower median kept: other processes
on a shared host only ever slow a measurement down.

Every result is appended to ``NAME.jsonl`` as it is made, so a stopped build resumes
where it stopped; the finished table is written to ``NAME.json``.

    python benchmarks/tabular/build.py mlp_mnist --data-dir /work/shared/data/mnist-t10k
    python benchmarks/tabular/build.py mlp_mnist --time 6      # time 6 trainings, write nothing
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

HERE = Path(__file__).resolve().parent
COST_PASSES = 2


class BuildError(ValueError):
    """A build that cannot start or go on; the message says what to do."""


@dataclass(frozen=True)
class TableSpec:
    """A grid over a space: ``grid`` values are searched, ``fixed`` ones held constant."""

    name: str
    space: str
    grid: Mapping[str, tuple]
    fixed: Mapping[str, Any]
    seeds: tuple[int, ...]
    data: str = "mnist"
    data_seed: int = 0
    profile: str = "cpu-mobile"
    note: str = ""

    def configs(self) -> Iterator[dict[str, Any]]:
        names = list(self.grid)
        for values in itertools.product(*(self.grid[n] for n in names)):
            yield {**dict(zip(names, values)), **self.fixed}

    def size(self) -> int:
        n = 1
        for v in self.grid.values():
            n *= len(v)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "space": self.space, "grid": {k: list(v) for k, v in self.grid.items()},
                "fixed": dict(self.fixed), "seeds": list(self.seeds), "data": self.data,
                "data_seed": self.data_seed, "profile": self.profile, "note": self.note}


# Sized by timing trainings on the build host (``--time``): ~0.5-1.5 s CPU per mlp training
# (2 epochs), 4-15 s per mobile-cnn training (1 epoch) with expand <= 2; expand 4 costs
# 12-30 s and was left out to keep the whole build near 30 CPU minutes.
TABLES = {t.name: t for t in (
    TableSpec(
        name="mlp_mnist", space="mlp",
        grid={"hidden_size_1": (16, 24, 32, 48, 64, 96, 128), "hidden_size_2": (16, 24, 32, 48, 64, 96, 128),
              "lr": (1e-4, 1e-3, 1e-2), "dropout": (0.0, 0.25)},
        fixed={"epochs": 2, "batch_size": 64}, seeds=(0, 1),
        note="widths log-spaced over the space's range [16, 128]; lr at both ends and the middle of "
             "[1e-4, 1e-2]; 7 x 7 x 3 x 2 = 294 configurations, 49 architectures",
    ),
    TableSpec(
        name="mobile_cnn_mnist", space="mobile-cnn",
        grid={"s2_depth": (1, 2), "s3_depth": (0, 1, 2), "kernel": (3, 5), "expand": (1, 2), "se": (0, 1)},
        fixed={"stem_width": 16, "s1_depth": 1, "s1_width": 16, "s2_width": 32, "s3_width": 32,
               "hardswish": 0, "lr": 0.01, "epochs": 1, "batch_size": 64}, seeds=(0, 1),
        note="2 x 3 x 2 x 2 x 2 = 48 architectures; training settings fixed (lr 0.01, 1 epoch, batch 64)",
    ),
)}


# ------------------------------------------------------------------ keys and files


def config_key(spec: TableSpec, params: Mapping[str, Any]) -> str:
    """Canonical key of a configuration: its grid values in grid order (fixed ones omitted)."""
    return json.dumps([params[n] for n in spec.grid])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a last line cut short by a kill is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_jsonl(path: Path, rec: Mapping[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    from odnas.cost.latency import cpu_model

    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": sys.version.split()[0],
            "versions": {p: version(p) for p in ("torch", "onnxruntime", "ax-platform", "odnas")}}


# ------------------------------------------------------------------ training


def train_eval(space, params: Mapping[str, Any], split, seed: int) -> dict[str, Any]:
    """Train one configuration as ``python -m odnas.trial`` would, and return val figures.

    Mirrors ``odnas.trial.run`` + ``odnas.train.fit``: seed, build, re-seed (Lightning's
    ``seed_everything``), Adam, cross-entropy, one permutation an epoch from a seeded
    generator that the DataLoader also draws its base seed from, the validation loader's
    draw from the global generator after each epoch (it moves dropout's masks), and
    evaluation in eval mode on the whole validation split. ``val_acc`` agrees with
    ``fit`` to the sample on the configurations checked (README).
    """
    import numpy as np
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    model = space.build(params, split.input_shape, split.num_classes)
    hp = space.training(params)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(hp["epochs"]):
        model.train()
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the DataLoader iterator's base seed
        perm = torch.randperm(len(y), generator=gen)
        for idx in perm.split(hp["batch_size"]):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return {"val_acc": None, "error": f"loss became {loss.item()}"}
            loss.backward()
            opt.step()
        torch.empty((), dtype=torch.int64).random_()  # the validation DataLoader's base seed (global RNG)
    model.eval()
    xv, yv = torch.from_numpy(split.x_val), torch.from_numpy(split.y_val)
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(yv), 1024):
            logits = model(xv[i:i + 1024])
            correct += int((logits.argmax(1) == yv[i:i + 1024]).sum())
            loss_sum += float(F.cross_entropy(logits, yv[i:i + 1024], reduction="sum"))
    return {"val_acc": correct / len(yv), "val_loss": loss_sum / len(yv),
            "train_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}


# ------------------------------------------------------------------ the build


def open_log(spec: TableSpec, out_dir: Path, data_dir: str | None) -> tuple[Path, list[dict[str, Any]]]:
    """The table's JSONL, created with a header, or checked against the spec when resumed."""
    path = out_dir / f"{spec.name}.jsonl"
    recs = read_jsonl(path)
    if recs:
        head = recs[0]
        if head.get("kind") != "meta" or head.get("spec") != json.loads(json.dumps(spec.to_dict())):
            raise BuildError(f"{path} was built from another grid or settings; move it aside to rebuild")
        return path, recs
    out_dir.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, {"kind": "meta", "spec": spec.to_dict(), "data_dir": data_dir, "created":
                        time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine()})
    return path, read_jsonl(path)


def build(spec: TableSpec, data_dir: str | None, out_dir: Path = HERE, limit: int | None = None,
          log=print) -> Path | None:
    """Run (or resume) the build; returns the finished table's path, or None if stopped early."""
    import torch

    from odnas.cost.lane import measure_candidate
    from odnas.data import load_data
    from odnas.profiles import load_profile
    from odnas.spaces import get_space

    torch.set_num_threads(1)
    space = get_space(spec.space)
    profile = load_profile(spec.profile)
    configs = list(spec.configs())
    for p in configs:
        try:
            space.check_fixed(p)
        except ValueError as e:
            raise BuildError(f"table {spec.name}: {e}") from None
    path, recs = open_log(spec, out_dir, data_dir)
    run = {"kind": "run", "command": command_line(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "host": socket.gethostname(), "load_avg": os.getloadavg()}
    append_jsonl(path, run)
    split = load_data(spec.data, data_dir, seed=spec.data_seed)
    done_train = {(r["key"], r["seed"]) for r in recs if r.get("kind") == "train"}
    done_cost = {(r["arch_id"], r["pass"]) for r in recs if r.get("kind") == "cost"}
    archs: dict[str, dict[str, Any]] = {}
    for p in configs:
        archs.setdefault(space.arch_id(p), p)
    t_start, made = time.perf_counter(), 0

    def costs(pass_: int) -> None:
        for arch, p in archs.items():
            if (arch, pass_) in done_cost:
                continue
            load = os.getloadavg()
            rec = measure_candidate(space, p, split.input_shape, split.num_classes, profile)
            append_jsonl(path, {"kind": "cost", "arch_id": arch, "pass": pass_, "load_avg": load, "record": rec})
            done_cost.add((arch, pass_))
            log(f"cost pass {pass_} {arch}: latency_ms {rec['metrics']['latency_ms']:.4f} "
                f"(load {load[0]:.1f})")

    costs(0)
    todo = [(p, s) for s in spec.seeds for p in configs if (config_key(spec, p), s) not in done_train]
    log(f"{spec.name}: {len(configs)} configurations x {len(spec.seeds)} seeds; {len(todo)} trainings to go")
    for p, s in todo:
        if limit is not None and made >= limit:
            log(f"stopped after {made} trainings (--limit)")
            return None
        res = train_eval(space, p, split, s)
        append_jsonl(path, {"kind": "train", "key": config_key(spec, p), "seed": s, "arch_id": space.arch_id(p),
                            "params": p, **res})
        made += 1
        el = time.perf_counter() - t_start
        log(f"[{made}/{len(todo)} {el / 60:5.1f} min] seed {s} {config_key(spec, p)}: val_acc {res['val_acc']} "
            f"({res.get('cpu_s')} s cpu)")
    costs(1)
    append_jsonl(path, {"kind": "end", "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "wall_s": round(time.perf_counter() - t_start, 1)})
    return assemble(spec, path)


def assemble(spec: TableSpec, log_path: Path) -> Path:
    """Write ``NAME.json``: metadata, one cost record per architecture, one entry per configuration."""
    import numpy as np

    recs = read_jsonl(log_path)
    head = recs[0]
    trains: dict[str, dict[int, dict[str, Any]]] = {}
    params: dict[str, dict[str, Any]] = {}
    arch_of: dict[str, str] = {}
    for r in recs:
        if r.get("kind") == "train":
            trains.setdefault(r["key"], {})[r["seed"]] = r
            params[r["key"]], arch_of[r["key"]] = r["params"], r["arch_id"]
    passes: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if r.get("kind") == "cost":
            passes.setdefault(r["arch_id"], []).append({**r["record"], "load_avg": r["load_avg"]})
    archs = {}
    for arch, ps in sorted(passes.items()):
        best = min(ps, key=lambda rec: rec["metrics"]["latency_ms"])
        archs[arch] = {"metrics": best["metrics"], "sem": best["sem"], "latency": best["latency"],
                       "uncounted_ops": best["uncounted_ops"],
                       "latency_ms_passes": [rec["metrics"]["latency_ms"] for rec in ps],
                       "load_avg_passes": [rec["load_avg"][0] for rec in ps]}
    entries = []
    for key, by_seed in trains.items():
        accs = [by_seed[s]["val_acc"] for s in spec.seeds if s in by_seed]
        ok = [a for a in accs if a is not None]
        entries.append({"key": key, "params": params[key], "arch_id": arch_of[key],
                        "val_acc": {str(s): by_seed[s]["val_acc"] for s in spec.seeds if s in by_seed},
                        "val_acc_mean": float(np.mean(ok)) if len(ok) == len(accs) else None,
                        "val_loss_mean": float(np.mean([by_seed[s]["val_loss"] for s in by_seed])) if ok else None,
                        "cpu_s": {str(s): by_seed[s].get("cpu_s") for s in by_seed}})
    missing = spec.size() * len(spec.seeds) - sum(len(v) for v in trains.values())
    if missing:
        raise BuildError(f"{log_path}: {missing} trainings still missing; run the build again to finish it")
    runs = [{k: r[k] for k in ("command", "started", "host", "load_avg")} for r in recs if r.get("kind") == "run"]
    cpu = sum(v or 0.0 for e in entries for v in e["cpu_s"].values())
    table = {
        "meta": {**head["spec"], "data_dir": head["data_dir"], "created": head["created"],
                 "machine": head["machine"], "runs": runs,
                 "finished": next((r["finished"] for r in reversed(recs) if r.get("kind") == "end"), None),
                 "train_cpu_s": round(cpu, 1),
                 "train": "plain loop reproducing odnas.train.fit (Adam, cross-entropy, seeded RandomSampler order); "
                          "val_acc on the validation split after the last epoch",
                 "costs": f"odnas.cost.lane.measure_candidate under {head['spec']['profile']}, best of "
                          f"{COST_PASSES} passes (before and after training) by latency_ms",
                 "n_train": None, "n_val": None},
        "archs": archs,
        "entries": sorted(entries, key=lambda e: e["key"]),
    }
    from odnas.data import load_data

    split = load_data(head["spec"]["data"], head["data_dir"], seed=head["spec"]["data_seed"])
    table["meta"].update(n_train=len(split.y_train), n_val=len(split.y_val),
                         input_shape=list(split.input_shape), num_classes=split.num_classes)
    out = log_path.with_suffix(".json")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return out


def command_line() -> str:
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python (library call)"


def time_some(spec: TableSpec, data_dir: str | None, n: int, log=print) -> None:
    """Train ``n`` configurations spread over the grid and print their times; writes nothing."""
    import torch

    from odnas.data import load_data
    from odnas.spaces import get_space

    torch.set_num_threads(1)
    space = get_space(spec.space)
    split = load_data(spec.data, data_dir, seed=spec.data_seed)
    configs = list(spec.configs())
    picks = random.Random(0).sample(configs, min(n, len(configs)))
    cpu = []
    for p in picks:
        res = train_eval(space, p, split, spec.seeds[0])
        cpu.append(res["cpu_s"])
        log(f"{config_key(spec, p)}: val_acc {res['val_acc']:.4f}, {res['train_s']} s wall, {res['cpu_s']} s cpu")
    per = sum(cpu) / len(cpu)
    total = per * len(configs) * len(spec.seeds)
    log(f"mean {per:.2f} s cpu a training; the table's {len(configs) * len(spec.seeds)} trainings: "
        f"~{total / 60:.1f} min cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: odnas's search path)")
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--time", type=int, default=None, metavar="N", help="time N trainings and stop")
    ap.add_argument("--limit", type=int, default=None, help="stop after this many trainings (resume later)")
    a = ap.parse_args(argv)
    spec = TABLES[a.table]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if a.time:
            time_some(spec, a.data_dir, a.time, log)
            return 0
        out = build(spec, a.data_dir, Path(a.out_dir), a.limit, log)
    except ValueError as e:  # BuildError, DataError, ProfileError: one line
        print(f"build: {e}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
