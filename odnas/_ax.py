"""Import Ax without its start-up chatter on the user's terminal.

``import ax`` logs an INFO line to stderr through a handler it attaches to the
``ax`` logger. odnas lets Ax's warnings through to stderr but keeps its INFO
lines for the run's log file (see ``odnas.search.quiet_logs``).
"""

from __future__ import annotations

import io
import logging
import sys


def import_ax() -> None:
    if "ax" in sys.modules:
        return
    real, buf = sys.stderr, io.StringIO()
    sys.stderr = buf
    try:
        import ax  # noqa: F401
    finally:
        sys.stderr = real
    for h in logging.getLogger("ax").handlers:
        if isinstance(h, logging.StreamHandler) and h.stream is buf:
            h.setStream(real)
            h.setLevel(logging.WARNING)
