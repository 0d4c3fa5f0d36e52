"""odnas's error classes: one hierarchy, so the CLI maps them to exit codes by type.

``OdnasError`` and its children are errors a user can cause or fix (a broken profile,
a missing data folder, a run dir in an odd state); their message is one sentence that
says what to do, and the CLI prints it without a traceback and exits with the class's
``exit_code``: 2 for input that is wrong, 3 (``SearchFailed``) for a search that ran
but could not succeed. Any other exception is a bug of ours and keeps its traceback.
Standard library only.
"""

from __future__ import annotations


class OdnasError(Exception):
    """Base class of the errors a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ProfileError(OdnasError, ValueError):
    """A hardware profile that cannot be loaded: the message names the file, key and value."""


class DataError(OdnasError, ValueError):
    """A data set that cannot be loaded; the message says what to do."""


class SpaceError(OdnasError, ValueError):
    """An unknown space, or a parameter value outside its space."""


class RunDirError(OdnasError):
    """A run dir that is missing, damaged, or written by a newer odnas."""


class SearchError(OdnasError):
    """A search that cannot start or go on; the message says what to do."""


class SelectError(OdnasError, ValueError):
    """A ``select`` bound no model can meet (``--min-acc 90`` for 90%)."""


class SearchFailed(OdnasError):
    """The search ran but could not succeed: too many trials failed, no candidate fits
    the budgets, or no trained model is feasible. Every completed trial is kept."""

    exit_code = 3


class SearchInterrupted(OdnasError):
    """The driver was interrupted (Ctrl-C, SIGTERM): completed trials are kept, and the
    message says what happened to running jobs and how to resume."""

    exit_code = 130


class OutputError(OdnasError):
    """A file the command was asked to write cannot be written there."""


class CalibrationError(OdnasError, ValueError):
    """A device table or calibration that cannot be used."""


class QuantizeError(OdnasError, ValueError):
    """A model that cannot be quantized as asked."""


class ParityError(OdnasError):
    """An exported ONNX file whose outputs disagree with the PyTorch model."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (a trial's failure reason, not a user error)."""
