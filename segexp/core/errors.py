"""User-facing errors: one base, :class:`SegexpError`, and one kind per stage.

Every mistake a user can make (a config key, a file, a folder, a server) raises a
subclass whose message names the key, file or value and what was expected. Each
command (``segexp/cli/``) catches :class:`SegexpError` once and prints that one line
(exit code 2); anything else is a bug and keeps its traceback. The kinds also derive
from ``ValueError`` (``RuntimeError`` for an unreachable server) so callers that
caught those before keep working.
"""

from __future__ import annotations


class SegexpError(Exception):
    """Base of every user-facing segexp error; the message is the whole report."""


class ConfigError(SegexpError, ValueError):
    """The composed config is invalid; the message names every offending key."""


class ResumeError(ConfigError):
    """``training.resume`` names nothing resumable, or the config differs; the message says which."""


class DataError(SegexpError, ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent; the message names it."""


class MaskColourError(SegexpError, ValueError):
    """A colour mask holds a colour that is not in the rgb_map."""


class VolumeError(SegexpError, ValueError):
    """A volume case is missing, unpaired or inconsistent; the message names the case (and file)."""


class SplitError(SegexpError, ValueError):
    """Impossible or inconsistent split request; the message names the config key."""


class PrepareError(SegexpError, ValueError):
    """The inputs or ``out_dir`` do not allow a safe preparation; the message names what."""


class AugmentationError(SegexpError, ValueError):
    """An augmentation config entry is invalid, or a pipeline produced an invalid mask."""


class OutputError(SegexpError, ValueError):
    """An output location cannot be used; the message names it, the key that chose it and what to do."""


class RunError(SegexpError, ValueError):
    """A run folder or MLflow run cannot be used; the message names it and what is missing."""


class EvaluationError(SegexpError, ValueError):
    """Model and dataset do not fit together; the message names both sides."""


class InferenceInputError(SegexpError, ValueError):
    """An input file cannot be predicted; the message names the file."""


class TrackingUnavailable(SegexpError, RuntimeError):
    """The tracking server cannot be reached; the message names the URI and what to do."""


def raise_config_problems(problems: list[str]) -> None:
    """Raise one :class:`ConfigError` listing every problem (each names its key); nothing when there are none."""
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
