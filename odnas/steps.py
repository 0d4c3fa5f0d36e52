"""What a long command is doing now, told to whoever shows it.

Library calls that take seconds to minutes (``select``'s confirmation, ``rescore``,
``export``, ``report``, ``measure``) take ``progress: Step | None`` and call it with a
few words before each step, once the input is checked (a bad input is one line
and nothing else); the CLI draws it (a spinner on a terminal, a line per
step in a log, nothing with ``--quiet``). Stdlib only: every layer may use it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

#: A progress callback: told, in a few words, what is being done now.
Step = Callable[[str], None]


def silent(text: str) -> None:
    """The callback when nobody watches."""


def fmt_value(v: Any, missing: str = "–") -> str:
    """A figure as a table shows it: four significant digits, whole numbers from 1000 up
    as they are, and ``missing`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
    return str(v)
