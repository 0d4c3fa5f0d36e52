"""Regenerate docs/benchmarks.md, all of it or chosen sections.

    python benchmarks/run.py                       # every section (about an hour on 2 cores)
    python benchmarks/run.py isolation spread      # only these; the others are kept as they are
    python benchmarks/run.py --list

Each section runs its commands in a fresh process, in order, and puts what the last
one printed into the document between ``<!-- section: NAME -->`` markers, under a
line that states the machine, the date and the commands. Markdown output is kept as
it is; plain text goes into a code block. Sections run one at a time: these are
2-core machines, and a benchmark beside another measures both.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BENCH = "runs/bench"  # relative: commands run from the repository root and are printed as they are
PY = "python"


@dataclass(frozen=True)
class Section:
    title: str
    commands: tuple[str, ...]
    markdown: bool = True  # what the last command prints is markdown (else: a code block)
    concat: bool = False  # keep what every command printed, not only the last
    note: str = ""


def _search(flags: str, run_dir: str, seed: int, es: str) -> str:
    return f"{PY} -m odnas search --profile cpu-mobile{flags} --run-dir {run_dir} --seed {seed} --quiet{es}"


def early_stopping_section(title: str, tag: str, flags: str = "", seeds: int = 3,
                           rules: tuple[tuple[str, str], ...] = (("on", " --early-stopping"),)) -> Section:
    """The default search, seeds ``0..seeds-1``, each without early stopping and with each
    rule, then ``benchmarks/early_stopping.py`` over the groups."""
    modes = (("off", ""), *rules)
    runs = [(seed, f"{BENCH}/{tag}-{seed}-{mode}", es) for seed in range(seeds) for mode, es in modes]
    return Section(title, (
        f"rm -rf {BENCH}/{tag}-*",
        *(_search(flags, d, seed, es) for seed, d, es in runs),
        f"{PY} benchmarks/early_stopping.py " + (f"--groups-of {len(modes)} " if len(modes) > 2 else "")
        + " ".join(d for _, d, _ in runs)), markdown=False)


def early_stopping_again(title: str, tag: str, mode: str, flags: str = "", seeds: int = 3,
                         es: str = " --early-stopping", before: tuple[str, ...] = ("off", "on"),
                         note: str = "") -> Section:
    """Like ``early_stopping_section``, but only the runs of ``mode``, against the runs
    an earlier section left (``before``), for a change to what early stopping does."""
    runs = [(seed, f"{BENCH}/{tag}-{seed}-{mode}") for seed in range(seeds)]
    groups = [f"{BENCH}/{tag}-{seed}-{m}" for seed in range(seeds) for m in (*before, mode)]
    return Section(title, (
        f"rm -rf {BENCH}/{tag}-*-{mode}",
        *(_search(flags, d, seed, es) for seed, d in runs),
        f"{PY} benchmarks/early_stopping.py --groups-of {len(before) + 1} " + " ".join(groups)),
        markdown=False, note=note)


LONG = " --space benchmarks/long_training.py:LongMobileCNN --fixed epochs=10 --trials 24"

SECTIONS: dict[str, Section] = {
    "overhead": Section(
        "Overhead of a real search, warm workers against fresh jobs: the default search and the tutorial problem",
        (f"{PY} benchmarks/overhead.py --default-seeds 0,1,2 --out {BENCH}/overhead",)),
    "tabular": Section(
        "Sample efficiency on a tabular benchmark from real training",
        (f"{PY} benchmarks/tabular/replay.py mlp_mnist --methods sobol,random,nsga2,tpe,bo --seeds 10",
         f"{PY} benchmarks/tabular/replay.py mobile_cnn_mnist --seeds 10 --bo-seeds 5"),
        concat=True,
        note="The tables themselves are built once by `benchmarks/tabular/build.py` (see "
             "benchmarks/tabular/README.md); replay trains nothing."),
    "cost": Section(
        "Cost of measuring, per profile, against the empty-model floor",
        (f"{PY} benchmarks/measurement.py --section cost",)),
    "isolation": Section(
        "Latency isolation from local trainings",
        (f"{PY} benchmarks/measurement.py --section isolation",)),
    "spread": Section(
        "One model in 5 fresh processes",
        (f"{PY} benchmarks/measurement.py --section spread",)),
    "reproducibility": Section(
        "Latency that reproduces: the same candidates measured again in fresh processes",
        (f"{PY} benchmarks/retest.py --models 20 --seed 0 --processes 2",)),
    "reproducibility-run": Section(
        "Latency that reproduces in a search: its figures against rescore and the exported pick",
        (f"{PY} -m odnas search --profile cpu-mobile --run-dir {BENCH}/repro --quiet",
         f"{PY} benchmarks/retest.py --run {BENCH}/repro"),
        note="The default search, then every trained candidate measured again by `odnas rescore` in a fresh "
             "process, and the exported pick against an independent plain loop in five fresh processes."),
    "modes": Section(
        "Speed modes that do not cancel: a search's timings read from fast rounds and from every round",
        (f"rm -rf {BENCH}/modes {BENCH}/modes-rounds.jsonl",
         f"{PY} benchmarks/modes.py --run-dir {BENCH}/modes --trials 48"),
        markdown=False,
        note="The tutorial-problem example with every timing round logged, each measurement read both ways "
             "from the same bursts, then the search's figures against `odnas rescore` in a fresh process."),
    "device": Section(
        "The device agent against the host's own measurement, on one machine",
        (f"{PY} benchmarks/device.py --profile cpu-mobile --repeats 2",),
        note="`odnas-device serve` on loopback, timing the shipped reference set under cpu-mobile, against "
             "the host's own backend in the benchmark's process; both calibrate their reference baseline "
             "afresh in each repeat."),
    "protocols": Section(
        "Timing protocols compared on a host with speed modes",
        (f"{PY} benchmarks/reproducibility.py --processes 6 --models 20",),
        note="The research behind the reference protocol: the old single-session median (P0), the lowest "
             "of short rounds (P1), the reference-normalised ratio (P2) and P2 over IOBinding (P3), each in "
             "fresh processes; 'fixed baseline' stands for the per-host cache odnas keeps."),
    "generation": Section(
        "Candidate generation time: odnas's optimizer settings against Ax's defaults",
        (f"{PY} benchmarks/generation.py --space mobile-cnn --trials 10 --repeats 2",), markdown=False),
    "early-stopping": early_stopping_section(
        "Early stopping: training time saved and front quality, seeds 0-4, each seed with and without", "es",
        seeds=5),
    "early-stopping-rule": early_stopping_section(
        "Early stopping rules compared, every trial at 4 epochs, seeds 0-9: against all trials from epoch 1 and "
        "from epoch 2, and against cheaper trials only", "esr", " --fixed epochs=4", seeds=10,
        rules=(("all1", " --early-stopping-against all"), ("all2", " --early-stopping-against all "
               "--early-stopping-from 2"), ("cheaper1", " --early-stopping-against cheaper"))),
    "early-stopping-long": early_stopping_section(
        "Early stopping on long trainings: every trial at 10 epochs, 24 trainings, seeds 0-4, each seed with and "
        "without", "esl", LONG, seeds=5),
    "early-stopping-long-fit": early_stopping_again(
        "Early stopping on long trainings, with only completed trials' val_acc fitted", "esl", "fit",
        LONG, seeds=5, note="Needs the `early-stopping-long` section's runs (`off`, and `on` from before the "
                            "change): the same searches with early stopping, on the code that fits only completed "
                            "trials' val_acc."),
    "status": Section(
        "`odnas status` in a fresh process: the driver's trials.json against the experiment",
        (f"rm -rf {BENCH}/status", f"{PY} -m odnas search --profile cpu-mobile --run-dir {BENCH}/status --quiet",
         f"{PY} benchmarks/status.py {BENCH}/status --repeats 5"),
        note="The default search, then its status read both ways in turn."),
    "cli": Section(
        "Reading commands and a bad input in a fresh process: trials.json against the experiment, and against the "
        "code before",
        (f"test -f {BENCH}/cli/trials.json || {PY} -m odnas search --profile cpu-mobile --run-dir {BENCH}/cli --quiet",
         "git worktree add -f /tmp/odnas-bbe09d3 bbe09d3 >/dev/null 2>&1 || true",
         f"{PY} benchmarks/cli_latency.py {BENCH}/cli --repeats 5 --against /tmp/odnas-bbe09d3"),
        note="bbe09d3 is the commit before `search` checked its input ahead of the driver's imports."),
    "saasbo": Section(
        "SAASBO on the 20-parameter space: generation time per iteration",
        (f"{PY} benchmarks/saasbo.py --train",),
        note="Needs `pip install -c constraints.txt -e '.[saasbo]'` (JAX and NumPyro for BoTorch's SAAS model)."),
    "load": Section(
        "Load: a 200-trial search with a fast in-process trial",
        (f"{PY} benchmarks/load.py --trials 200 --parallel 4 --fixed epochs=1 --fixed batch_size=64",)),
    "candidates": Section(
        "Candidates made in a child process against in the driver: the same search?",
        (f"{PY} benchmarks/candidates.py --seeds {','.join(map(str, range(15)))} --trials 24",), markdown=False),
    "acquisition": Section(
        "Where a model-based candidate's time goes, and what BoTorch's MC samples cost",
        (f"{PY} benchmarks/acquisition.py {BENCH}/overhead/tutorial-warm-s* --mc-samples 128,64,32,16 --repeats 3",
         f"{PY} benchmarks/acquisition.py $(ls -d {BENCH}/overhead/tutorial-warm-s0-* | tail -1) --mc-samples 128 "
         "--repeats 3 --profile"),
        markdown=False, concat=True,
        note="Needs the `overhead` section's runs: the next candidate of each finished tutorial-problem run "
             "(48 trials), made again with each number of MC samples."),
}


def machine() -> str:
    from odnas.cost.latency import cpu_model

    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu_model()}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def run_section(name: str, sec: Section, from_output: Path | None = None) -> str:
    t0 = time.time()
    out = ""
    if from_output is not None:  # a long benchmark's output, recorded when its commands ran
        out = from_output.read_text()
        t0 = from_output.stat().st_mtime
        return _block(name, sec, out, time.strftime('%Y-%m-%d %H:%M', time.localtime(t0)),
                      f"recorded in "
                      f"`{from_output.relative_to(ROOT) if from_output.is_relative_to(ROOT) else from_output}`"
                      " when the commands ran")
    # `python` in the commands is this interpreter (the venv's), activated or not.
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in sec.commands:
        print(f"[{name}] $ {cmd}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"section {name}: `{cmd}` failed with exit code {proc.returncode}; "
                             "docs/benchmarks.md is unchanged")
        out = (out + "\n\n" + proc.stdout) if sec.concat else proc.stdout
    return _block(name, sec, out, time.strftime('%Y-%m-%d %H:%M'), f"took {time.time() - t0:.0f} s")


def _block(name: str, sec: Section, out: str, date: str, how: str) -> str:
    body = out.strip() if sec.markdown else f"```\n{out.strip()}\n```"
    if sec.markdown:  # a script's own headings sit under the section's
        body = re.sub(r"^(#{1,5}) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", body, flags=re.M)
    cmds = "\n".join(sec.commands)
    head = (f"## {sec.title}\n\n"
            f"*Machine:* {machine()}. *Date:* {date} ({how}). *Commands* (from the repository root; "
            f"`python benchmarks/run.py {name}` reruns them):\n\n```\n{cmds}\n```\n")
    if sec.note:
        head += f"\n{sec.note}\n"
    return f"<!-- section: {name} -->\n{head}\n{body}\n<!-- /section: {name} -->"


def splice(doc: str, name: str, block: str) -> str:
    pat = re.compile(rf"<!-- section: {re.escape(name)} -->.*?<!-- /section: {re.escape(name)} -->", re.S)
    if pat.search(doc):
        return pat.sub(lambda _: block, doc)
    return doc.rstrip() + "\n\n" + block + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", help=f"any of: {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--from-output", metavar="FILE",
                    help="with one section: put FILE (what its commands printed earlier) in, instead of running them")
    a = ap.parse_args()
    if a.list:
        for k, s in SECTIONS.items():
            print(f"{k:15s} {s.title}\n{'':15s} {' && '.join(s.commands)}")
        return 0
    unknown = [s for s in a.sections if s not in SECTIONS]
    if unknown:
        print(f"run.py: unknown sections {unknown}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    (ROOT / BENCH).mkdir(parents=True, exist_ok=True)
    doc_path = Path(a.doc)
    if a.from_output and len(a.sections) != 1:
        print("run.py: --from-output goes with exactly one section", file=sys.stderr)
        return 2
    for name in a.sections or list(SECTIONS):
        block = run_section(name, SECTIONS[name], Path(a.from_output).resolve() if a.from_output else None)
        doc = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
        doc_path.write_text(splice(doc, name, block))  # written per section: a stop keeps what ran
        print(f"[{name}] written to {doc_path}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
