"""Data problems: one :class:`Problem` per bad file or key, and the :class:`Problems` collector.

Every reader of the data takes ``problems: Problems | None``. Without a collector it is
strict, as training and ``segexp-prepare`` read: :func:`report` raises the reader's error
(:class:`DataError` unless told) at the first problem. With one it is tolerant, as
``segexp-check`` reads: the problem is recorded and reading goes on, so one pass finds all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from segexp.core.errors import DataError, SegexpError

Severity = Literal["error", "warning"]
_SHOWN = 20  # problems named in one strict error


@dataclass(frozen=True)
class Problem:
    """One problem: the file (or folder, or config key) it concerns, its cause and severity.

    An ``error`` fails ``segexp-check``; a ``warning`` is reported only.
    """

    file: str
    cause: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.cause}"

    @classmethod
    def from_error(cls, err: Exception, file: Path | str) -> Problem:
        """A raised error as a problem of ``file``: the ``<file>: `` (or ``<file> ``) start of its message split off."""
        text = str(err)
        for prefix in (f"{file}: ", f"{file} "):
            if text.startswith(prefix):
                return cls(str(file), text[len(prefix) :])
        return cls(str(file), text)


@dataclass
class Problems:
    """The problems found so far, in order; one found twice is kept once."""

    items: list[Problem] = field(default_factory=list)
    _seen: set[Problem] = field(default_factory=set, repr=False, compare=False)

    def add(self, problem: Problem) -> None:
        if problem not in self._seen:
            self._seen.add(problem)
            self.items.append(problem)

    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def report(
    problems: Problems | None,
    found: Problem | Sequence[Problem],
    message: str | None = None,
    error: type[SegexpError] = DataError,
) -> None:
    """Record ``found`` in ``problems``, or, strict (``problems`` None), raise ``error``.

    The error says ``message``, by default the problems themselves. ``found`` may be one
    problem or a batch found together (raised as one error); an empty batch is no problem.
    """
    batch = [found] if isinstance(found, Problem) else list(found)
    if not batch:
        return
    if problems is None:
        raise error(message or _text(batch))
    for problem in batch:
        problems.add(problem)


def _text(batch: Sequence[Problem]) -> str:
    if len(batch) == 1:
        return str(batch[0])
    more = [f"... and {len(batch) - _SHOWN} more"] if len(batch) > _SHOWN else []
    return f"{len(batch)} problems:\n  " + "\n  ".join([*map(str, batch[:_SHOWN]), *more])
