"""Postprocessing of predicted labels, chosen per class on the validation split (after nnU-Net's
``determine_postprocessing``).

A predicted structure is judged per case on its stacked slices ``(S, H, W)`` (a lone 2D slice is a
stack of one); connected components are 3D with face connectivity (6 neighbours), by
``scipy.ndimage.label``. Rules per foreground class, each turning the removed voxels into background:

- ``min_volume``: drop the class from a case where it is predicted in fewer than ``min_voxels``
  voxels in all (a presence test);
- ``min_size``: drop the class's components smaller than ``min_voxels`` voxels;
- ``largest``: keep only the class's largest component.

Why: the scorer (and nnU-Net's) gives a case **Dice 0** for a structure absent from its truth but
predicted anywhere, and leaves the case out when both are empty. A few stray voxels in such a case
cost the structure that whole case, while dropping a true prediction that small costs a case that
has the structure at most that small share of its volume.

:func:`determine` goes class by class, in class order, on top of the rules already chosen. A rule that
**raises** the class's mean validation Dice over cases is kept (the best; of equal ones the stronger,
larger size), as nnU-Net keeps a rule only when it raises the score. Unlike nnU-Net, when no candidate
raises it but the weakest one leaves it unchanged, the weakest is kept: a validation split of one or
two patients rarely holds a case without the structure, so it cannot show the gain, and by the
asymmetry above dropping a prediction of under 1 % of the structure's typical volume is nearly free.
The candidates (:func:`candidates`) are ``min_volume`` at 1 %, 3 % and 10 % of the class's median
per-case volume in the validation truth. ``min_size`` and ``largest`` are not tried: chosen on one or
two validation patients they removed true fragments on new ones (ACCURACY.md "Postprocessing": with
``largest`` among the candidates hvsmr_mini's seed 2 fell from 0.190 to 0.133 on its test patient,
``min_size`` moved the three seeds by -0.007 to +0.007), while ``min_volume`` raised the thorax
pulmonary test Dice from 0.578 to 0.801 and the aorta's from 0.476 to 0.497 and changed no hvsmr_mini
seed. They remain rules a ``postprocessing.json`` may name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segexp.config.options import PostprocessMode, expected
from segexp.config.options import PostprocessRule as Rule
from segexp.core.errors import EvaluationError
from segexp.core.files import atomic_write_text
from segexp.tracking.runs import ModelSource

FILE_NAME = "postprocessing.json"
FRACTIONS = (0.01, 0.03, 0.1)  # candidate min_volume as a share of the class's median per-case volume


@dataclass(frozen=True)
class ClassRule:
    """The rule of one class; ``min_voxels`` only for ``min_size``."""

    rule: Rule = Rule.none
    min_voxels: int = 0

    def describe(self) -> str:
        return {
            Rule.min_volume: f"drop it from a case where it is predicted in < {self.min_voxels} voxels",
            Rule.min_size: f"drop components < {self.min_voxels} voxels",
            Rule.largest: "keep the largest component",
            Rule.none: "none",
        }[self.rule]


@dataclass
class Postprocessing:
    """Chosen rules by class name (foreground only), and the validation Dice that chose them."""

    class_names: list[str]
    rules: dict[str, ClassRule] = field(default_factory=dict)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def active(self) -> dict[str, ClassRule]:
        return {name: r for name, r in self.rules.items() if r.rule is not Rule.none}

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` (``(S, H, W)`` or ``(H, W)`` class indices) with every active rule applied (a copy)."""
        out = np.array(labels, copy=True)
        stack = out if out.ndim == 3 else out[None]
        for name, rule in self.active.items():
            apply_rule(stack, self.class_names.index(name), rule)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "rules": {name: {"rule": str(r.rule), "min_voxels": r.min_voxels} for name, r in self.rules.items()},
            "validation": self.validation,
            "method": "per class, kept only if it raises the mean validation Dice over cases "
            "(segexp.evaluation.postprocess)",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "postprocessing") -> Postprocessing:
        try:
            names = list(data["class_names"])
            rules = {name: ClassRule(Rule(r["rule"]), int(r.get("min_voxels", 0))) for name, r in data["rules"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise EvaluationError(
                f"{source}: not a segexp postprocessing file ({err!r}); "
                f"expected keys class_names and rules: {{name: {{rule: {'|'.join(Rule)}}}}}"
            ) from err
        unknown = sorted(set(rules) - set(names[1:]))
        if unknown:
            raise EvaluationError(f"{source}: rules for unknown classes {unknown}; the classes are {names[1:]}")
        return cls(names, rules, dict(data.get("validation", {})))

    def save(self, path: Path) -> Path:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Postprocessing:
        try:
            return cls.from_json(json.loads(path.read_text()), str(path))
        except (OSError, ValueError) as err:
            raise EvaluationError(f"{path}: cannot read the postprocessing rules: {err}") from err


_FACES_3D = ndimage.generate_binary_structure(3, 1)


def apply_rule(stack: np.ndarray, k: int, rule: ClassRule) -> None:
    """Apply ``rule`` to class ``k`` of the ``(S, H, W)`` label ``stack`` in place (removed voxels -> 0)."""
    if rule.rule is Rule.none:
        return
    mask = stack == k
    if not mask.any():
        return
    if rule.rule is Rule.min_volume:
        if np.count_nonzero(mask) < rule.min_voxels:
            stack[mask] = 0
        return
    components, n = ndimage.label(mask, structure=_FACES_3D)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    if rule.rule is Rule.largest:
        keep = np.zeros(n + 1, bool)
        keep[int(np.argmax(sizes))] = True
    else:
        keep = sizes >= rule.min_voxels
    keep[0] = True  # not class k: untouched
    stack[mask & ~keep[components]] = 0


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of one binary structure; NaN when absent from both (left out of means, as in the scorer)."""
    t, p = int(truth.sum()), int(pred.sum())
    if t + p == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(truth & pred)) / (t + p)


def _mean_dice(cases: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> float:
    values = [d for d in (_dice(t == k, p == k) for t, p in cases) if not math.isnan(d)]
    return float(np.mean(values)) if values else math.nan


def candidates(
    truths: Iterable[np.ndarray],
    k: int,
    fractions: Sequence[float] = FRACTIONS,
    rules: Sequence[Rule] = (Rule.min_volume,),
) -> list[ClassRule]:
    """Candidate rules for class ``k``, weakest first: for each of ``rules`` in order, ``min_volume`` and
    ``min_size`` at ``fractions`` of the median per-case voxel count of ``k`` where present in ``truths`` (at least 2
    voxels, distinct sizes), ``largest`` once; none when ``k`` is absent from every truth."""
    present = [v for v in (int(np.count_nonzero(t == k)) for t in truths) if v > 0]
    if not present:
        return []
    median = float(np.median(present))
    sizes = sorted({max(2, int(round(f * median))) for f in fractions})
    found: list[ClassRule] = []
    for rule in rules:
        if rule is Rule.largest:
            found.append(ClassRule(Rule.largest))
        elif rule in (Rule.min_volume, Rule.min_size):
            found += [ClassRule(rule, size) for size in sizes]
    return found


def determine(
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    fractions: Sequence[float] = FRACTIONS,
    rules: Sequence[Rule] = (Rule.min_volume,),
    keep_harmless: bool = True,
) -> Postprocessing:
    """The rules that raise validation Dice, from ``cases``: ``(truth, prediction)`` label stacks ``(S, H, W)``
    per validation case, trying :func:`candidates` of ``rules``. A class absent from every validation truth gets
    no rule (nothing to measure). ``keep_harmless``: keep the weakest candidate where none raises the Dice but it
    leaves it unchanged (one or two validation patients, module docstring); False: nnU-Net's rule, only a raise
    counts (cross-validated cases, :mod:`segexp.evaluation.crossval`)."""
    if not cases:
        raise EvaluationError("postprocessing: the validation split has no cases to choose rules on")
    names = list(class_names)
    current = [(t, np.array(p, copy=True)) for t, p in cases]
    chosen = Postprocessing(names)
    for k, name in enumerate(names[1:], start=1):
        baseline = _mean_dice(current, k)
        best_rule, best_score, best_preds = ClassRule(), baseline, None
        tried: dict[str, float | None] = {}
        if not any((t == k).any() for t, _ in current):
            chosen.rules[name] = best_rule
            chosen.validation[name] = {
                "dice_before": _nan_to_none(baseline),
                "dice_after": _nan_to_none(baseline),
                "rule": str(Rule.none),
                "why": "absent from every validation case",
            }
            continue
        candidates_of_k = candidates((t for t, _ in current), k, fractions, rules)
        raised: list[tuple[float, int, ClassRule, list[np.ndarray]]] = []
        harmless: list[tuple[ClassRule, list[np.ndarray]]] = []
        for rule in candidates_of_k:
            preds = [np.array(p, copy=True) for _, p in current]
            for p in preds:
                apply_rule(p, k, rule)
            score = _mean_dice([(t, p) for (t, _), p in zip(current, preds)], k)
            tried[rule.describe()] = _nan_to_none(score)
            if score > baseline:  # NaN compares False
                raised.append((score, len(raised), rule, preds))
            elif score == baseline:
                harmless.append((rule, preds))
        if raised:  # the best; a tie goes to the later, stronger candidate
            best_score, _, best_rule, best_preds = max(raised, key=lambda c: (c[0], c[1]))
        elif keep_harmless and harmless and harmless[0][0] == candidates_of_k[0]:  # cannot tell: the weakest
            best_rule, best_preds = harmless[0]
        if best_preds is not None:
            current = [(t, p) for (t, _), p in zip(current, best_preds)]
        chosen.rules[name] = best_rule
        chosen.validation[name] = {
            "dice_before": _nan_to_none(baseline),
            "dice_after": _nan_to_none(best_score),
            "rule": best_rule.describe(),
            "tried": tried,
        }
    return chosen


def check_postprocess_mode(mode: str, key: str = "postprocess") -> PostprocessMode:
    """``mode`` as a :class:`PostprocessMode`, or an error naming ``key`` and the choices."""
    error = expected(key, mode, PostprocessMode)
    if error is not None:
        raise EvaluationError(error)
    return PostprocessMode(mode)


def for_run(run: ModelSource, mode: str = PostprocessMode.auto) -> Postprocessing | None:
    """The rules ``run``'s training chose (``postprocessing.json``) for ``mode`` ``auto``; None for ``none``
    or a run trained without them. For a fold ensemble: the rules its cross-validation chose on the
    cross-validated predictions (they replace each fold's own)."""
    if check_postprocess_mode(mode) is PostprocessMode.none:
        return None
    path = run.artifact_file(FILE_NAME)
    if path is None:
        return None
    post = Postprocessing.load(path)
    if post.class_names != run.class_names:
        raise EvaluationError(
            f"{path}: rules for classes {post.class_names}, but the run's classes are {run.class_names}"
        )
    return post


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def describe(post: Postprocessing) -> str:
    """One line per class: the rule and the validation Dice before -> after."""
    lines = []
    for name in post.class_names[1:]:
        v = post.validation.get(name, {})
        rule = post.rules.get(name, ClassRule())
        before, after = v.get("dice_before"), v.get("dice_after")
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"{name}: {rule.describe()} (validation Dice {fmt(before)} -> {fmt(after)})")
    return "\n".join(lines)


__all__ = [
    "FILE_NAME",
    "FRACTIONS",
    "ClassRule",
    "Postprocessing",
    "Rule",
    "apply_rule",
    "candidates",
    "check_postprocess_mode",
    "describe",
    "determine",
    "for_run",
]
