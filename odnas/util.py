"""Small helpers shared by the CLI and the library (standard library only)."""

from __future__ import annotations


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
