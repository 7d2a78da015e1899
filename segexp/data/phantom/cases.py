"""Phantom cases: ids, per-case seeds and their numbering across splits.

Case number ``n`` (1-based) is ``phantom<nnn>`` with a seed derived from the dataset seed and
``n`` alone, so the same id is the same anatomy in the slice and the volume writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["case_id", "case_plan", "case_seed", "check_seed"]


def check_seed(seed: int) -> None:
    """Raise :class:`ValueError` unless ``seed`` is a non-negative integer."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def case_seed(seed: int, case_number: int) -> int:
    """Per-case seed: the first uint32 of ``SeedSequence([seed, case_number])`` (``case_number`` 1-based)."""
    return int(np.random.SeedSequence([int(seed), int(case_number)]).generate_state(1, dtype=np.uint32)[0])


def case_id(case_number: int) -> str:
    """``phantom001`` for case number 1; the same id means the same anatomy in both writers."""
    return f"phantom{case_number:03d}"


def case_plan(cases: Mapping[str, int], seed: int) -> list[dict[str, Any]]:
    """``{"id", "split", "seed"}`` per case, numbered from 1 in the order of ``cases`` (split -> count)."""
    plan, number = [], 0
    for split, count in cases.items():
        for _ in range(count):
            number += 1
            plan.append({"id": case_id(number), "split": split, "seed": case_seed(seed, number)})
    return plan
