"""odnas's public Python API in one place: what the CLI does, one call each.

    from odnas.api import SearchConfig, search, load_run, front, export_trial

    run_dir = search(SearchConfig(profile="cpu-mobile", trials=16))
    run = load_run(run_dir)                       # settings, profile, TrialRow per trial, Ax experiment
    best = front(run.rows, run.profile)[0]        # the most accurate model within every budget
    card = export_trial(run_dir, "model.onnx", trial=best.trial)

The modules behind these names are the package's layers (``docs/design.md``); this
module only gathers them, so a user need not know the tree.
"""

from odnas.errors import OdnasError
from odnas.export import export_artifact, export_trial
from odnas.loop.config import SearchConfig
from odnas.loop.driver import resume, search
from odnas.loop.store import Run, load_run
from odnas.profiles import HardwareProfile, load_profile
from odnas.records import CostRecord, ModelCard, RunSettings, TrialRow
from odnas.report import write_report
from odnas.rescore import confirm_front, rescore
from odnas.select import front, pick
from odnas.spaces import get_space, list_spaces, register_space

__all__ = [
    "CostRecord", "HardwareProfile", "ModelCard", "OdnasError", "Run", "RunSettings", "SearchConfig", "TrialRow",
    "confirm_front", "export_artifact", "export_trial", "front", "get_space", "list_spaces", "load_profile",
    "load_run", "pick", "register_space", "rescore", "resume", "search", "write_report",
]
