"""Small helpers shared by the CLI and the library (standard library only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def parse_kv(text: str | None) -> dict[str, str]:
    """``"queue=default,namespace=ml"`` -> dict (TorchX's ``-cfg`` syntax)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            if "=" not in part:
                raise ValueError(f"{part!r} is not key=value")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that a reader (or a kill) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None if it is missing or not (yet) valid."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
