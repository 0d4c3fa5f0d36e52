"""Users' own code by reference: ``package.module:Name``, ``path/to/file.py:Name`` or an
installed package's entry point, resolved the same way in the driver and in every
trial job. Standard library only.

A reference is a string, so it travels in a run's settings and a TorchX job's
arguments; the job imports the same object, provided the user's code is importable
there (the working directory or ``PYTHONPATH`` on ``local_cwd``; installed in, or
copied into, the image elsewhere: docs/plugins.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from odnas.errors import OdnasError


def is_reference(text: str) -> bool:
    """``module:Name`` or ``file.py:Name`` (not a registered name)."""
    return ":" in text and not text.startswith(("npz:", "folder:"))


def absolute(text: str) -> str:
    """The reference with a file path made absolute (for a job started elsewhere)."""
    path, _, attr = text.rpartition(":")
    if path.endswith(".py"):
        return f"{Path(path).expanduser().resolve()}:{attr}"
    return text


def load_reference(text: str, what: str, error: type[OdnasError]) -> Any:
    """The object ``text`` names; ``error`` with one line when it cannot be had."""
    path, _, attr = text.rpartition(":")
    if not path or not attr:
        raise error(f"{what} {text!r}: expected package.module:Name or path/to/file.py:Name")
    try:
        if path.endswith(".py"):
            file = Path(path).expanduser().resolve()
            if not file.is_file():
                raise error(f"{what} {text!r}: no such file {file}")
            # One module per file, under a stable name: importing it twice gives the same classes.
            name = "odnas_user_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                # its own folder importable, as for a script run with python: a sibling helper module
                if str(file.parent) not in sys.path:
                    sys.path.append(str(file.parent))
                spec = importlib.util.spec_from_file_location(name, file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(path)
    except OdnasError:
        raise
    except ModuleNotFoundError as e:
        raise error(f"{what} {text!r}: cannot import {e.name!r} (is it installed, or on PYTHONPATH?)") from None
    except Exception as e:  # the user's module raised while importing: say where, keep it one line
        raise error(f"{what} {text!r}: importing it raised {type(e).__name__}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise error(f"{what} {text!r}: {path} has no {attr!r}") from None


def entry_point(group: str, name: str, error: type[Exception] = ImportError) -> Any | None:
    """The object an installed package registers under ``group`` as ``name``, or None;
    ``error`` in one line, naming the package, if its entry point does not load."""
    for ep in entry_points(group=group):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as e:  # noqa: BLE001 -- another package's code: any error, one line
                dist = f" (package {ep.dist.name})" if getattr(ep, "dist", None) is not None else ""
                first = (str(e).strip().splitlines() or [""])[0]
                raise error(f"{group} entry point {name!r} = {ep.value!r}{dist} does not load: "
                            f"{type(e).__name__}: {first}") from None
    return None


def entry_point_names(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))
