"""Candidate-generation time of Ax's Bayesian optimisation on odnas spaces.

Compares Ax's default acquisition-optimizer settings with odnas's, on the same
synthetic outcomes, in one process, alternating the settings so machine noise
hits both alike. Prints the median seconds per candidate and the ratio.

    python benchmarks/generation.py --space mobile-cnn --trials 12 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
import warnings

from odnas.loop.adapter import ax_parameters, import_ax

import_ax()


def make_client(space, settings: str, seed: int):
    from ax.api.client import Client

    from odnas.loop.config import generation_strategy

    c = Client(random_seed=seed)
    c.configure_experiment(parameters=ax_parameters(space.searched()))
    c.configure_optimization("val_acc, -latency_ms",
                             outcome_constraints=["val_acc >= 0.85", "latency_ms <= 0.13", "num_params <= 100000"])
    gs = generation_strategy("bo", seed, 5, 16)
    for node in gs.nodes_by_name.values():
        for spec in node.generator_specs:
            if settings == "ax-default":
                spec.generator_gen_kwargs.pop("model_gen_options", None)
            if node.name == "MBM" and settings in ("ax-default", "odnas-tracking"):
                spec.generator_kwargs = {**spec.generator_kwargs, "fit_tracking_metrics": True}
    c.set_generation_strategy(gs)
    return c


def outcome(p, rng):
    x = sum(float(v) for v in p.values() if isinstance(v, (int, float)))
    lat = 0.05 + 0.002 * x * rng.random()
    # the tracking metrics a search records beside them (not in the objective or the bounds)
    return {"latency_ms": lat, "num_params": 1000 * x, "val_acc": 0.7 + 0.25 * rng.random(),
            "flops": 900 * x, "model_bytes": 4000 * x, "latency_ms_p90": 1.2 * lat}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobile-cnn")
    ap.add_argument("--trials", type=int, default=12, help="completed trials before timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", default="ax-default,odnas",
                    help="ax-default (Ax's acquisition settings, every metric modelled), odnas-tracking "
                         "(odnas's settings, tracking metrics modelled too), odnas")
    a = ap.parse_args()
    logging.getLogger("ax").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    from odnas.spaces import get_space

    space = get_space(a.space)
    times: dict[str, list[float]] = {k: [] for k in a.settings.split(",")}
    for r in range(a.repeats):
        for settings in times:
            rng = random.Random(r)
            c = make_client(space, settings, seed=r)
            for _ in range(a.trials):
                for idx, p in c.get_next_trials(1).items():
                    c.complete_trial(idx, outcome(p, rng))
            t = time.perf_counter()
            c.get_next_trials(1)
            times[settings].append(time.perf_counter() - t)
            print(f"repeat {r} {settings:10s} {times[settings][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"space {a.space}, {len(space.searched())} parameters, {a.trials} completed trials, "
          f"{a.repeats} repeats")
    for k, v in med.items():
        print(f"median seconds per candidate, {k}: {v:.2f}")
    for k in med:
        if k != "odnas" and "odnas" in med:
            print(f"ratio {k} / odnas: {med[k] / med['odnas']:.2f}")


if __name__ == "__main__":
    main()
