"""The package's layers run one way, Ax's privates stay in one adapter, and the CLI starts light."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_AX = re.compile(r"\._experiment\b|\._generation_strategy\b|\._properties\b|\._nodes\b|_save_or_update")


def test_import_contracts_hold():
    """import-linter's contracts from pyproject.toml: layers, readers never import the
    driver, nothing below the loop imports Ax. A broken one names the offending import."""
    proc = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 4


def test_ax_privates_only_in_the_adapter():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "odnas").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if PRIVATE_AX.search(line) and p.name != "adapter.py"]
    assert hits == []


def test_help_imports_nothing_heavy():
    code = ("import sys; from odnas.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'ax', 'numpy', 'onnxruntime', 'torchx', 'pytorch_lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
