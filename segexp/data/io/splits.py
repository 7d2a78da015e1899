"""Splitting cases (patients) into train / valid / test, and k-fold cross-validation.

Slices of one patient are strongly correlated, so segexp splits **cases**, never
slices: every case lands in exactly one of ``train``, ``valid``, ``test``.

* Ratios (``split.ratios``, e.g. ``{train: 0.7, valid: 0.15, test: 0.15}``):
  the sorted case list is shuffled with ``numpy.random.default_rng(seed)`` and cut
  in the order train, valid, test. Counts use largest-remainder rounding
  (``floor(ratio * n)`` each, the cases left over go to the largest fractional
  parts, ties in split order), so they always sum to ``n``; every split with a
  positive ratio then gets at least one case (taken from the split most above its
  quota that keeps at least one).
* Explicit (argument ``explicit``, config key ``split.cases``, e.g.
  ``{train: [a, b], valid: [c], test: [d]}``): every case must be listed exactly
  once, and only known cases may be listed.
* k-fold (``split.folds = K``, ``split.fold = k``), as in nnU-Net: the test split
  is chosen first (by the ``test`` ratio, the same test cases as the plain ratio
  split with that seed, or by ``split.cases.test``); the remaining cases, sorted and
  shuffled with ``default_rng(seed)``, are cut into K contiguous folds of
  near-equal size (the first ``n mod K`` folds get one case more). Fold ``k`` is
  ``valid``, the others ``train``. The partition does not depend on ``k``, so the
  K runs together validate every non-test case exactly once (:func:`fold_table`).

Errors are :class:`SplitError` (a ``ValueError``) naming the config key
(``split.ratios``, ``split.cases``, ``split.folds``, ``split.fold``, ``split.seed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from segexp.config.options import Split, values
from segexp.core.errors import SplitError

SPLITS: tuple[str, ...] = values(Split)
"""The split names, in cutting order."""

DEFAULT_RATIOS: Mapping[str, float] = {"train": 0.7, "valid": 0.15, "test": 0.15}
"""Ratios used when neither ``ratios`` nor ``explicit`` is given."""

_RATIO_TOL = 1e-6


def _shorten(names: Iterable[Any], limit: int = 20) -> str:
    names = [str(n) for n in names]
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_cases(cases: Sequence[str]) -> list[str]:
    if isinstance(cases, (str, bytes)):
        raise SplitError(f"cases must be a sequence of case ids, got the string {cases!r}")
    out = [str(c) for c in cases]
    dup = sorted({c for c in out if out.count(c) > 1}) if len(set(out)) != len(out) else []
    if dup:
        raise SplitError(f"case ids must be unique; repeated: {_shorten(dup)}")
    return sorted(out)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SplitError(f"split.seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def _check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(ratios, Mapping):
        raise SplitError(f"split.ratios: expected a mapping like {dict(DEFAULT_RATIOS)}, got {ratios!r}")
    unknown = [str(k) for k in ratios if k not in SPLITS]
    if unknown:
        raise SplitError(f"split.ratios: unknown split(s) {unknown}; use {list(SPLITS)}")
    out: dict[str, float] = {}
    for name in SPLITS:
        value = ratios.get(name, 0.0)
        if value is None:
            value = 0.0
        try:
            ratio = float(value)
        except (TypeError, ValueError) as err:
            raise SplitError(f"split.ratios.{name}: expected a number in [0, 1], got {value!r}") from err
        if isinstance(value, bool) or not (0.0 <= ratio <= 1.0):
            raise SplitError(f"split.ratios.{name}: expected a number in [0, 1], got {value!r}")
        out[name] = ratio
    total = sum(out.values())
    if abs(total - 1.0) > _RATIO_TOL:
        raise SplitError(f"split.ratios: must sum to 1, got {out} (sum {total:g})")
    return out


def _counts(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder counts per split summing to ``n``; positive ratios get >= 1 case."""
    positive = [s for s in SPLITS if ratios[s] > 0]
    if n < len(positive):
        raise SplitError(
            f"split.ratios: {dict(ratios)} needs at least {len(positive)} cases "
            f"(one per split with a positive ratio), got {n}"
        )
    # Rounding to 9 decimals keeps 0.7 * 10 = 7.000000000000001 from stealing a remainder.
    quota = {s: round(ratios[s] * n, 9) for s in SPLITS}
    counts = {s: math.floor(quota[s]) for s in SPLITS}
    left = n - sum(counts.values())
    by_remainder = sorted(SPLITS, key=lambda s: (-(quota[s] - counts[s]), SPLITS.index(s)))
    for s in by_remainder[:left]:
        counts[s] += 1
    for s in positive:
        if counts[s] == 0:
            donor = max(SPLITS, key=lambda d: (counts[d] - quota[d] if counts[d] > 1 else -math.inf, counts[d]))
            if counts[donor] <= 1:  # cannot happen when n >= len(positive); kept as a guard
                raise SplitError(f"split.ratios: cannot give every split a case with {n} cases")
            counts[donor] -= 1
            counts[s] += 1
    return counts


def _as_id_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise SplitError(f"{key}: expected a list of case ids, got {value!r}")
    return [str(v) for v in value]


def _check_explicit(
    explicit: Mapping[str, Sequence[str]], known: Sequence[str], *, require_all: bool
) -> dict[str, list[str]]:
    if not isinstance(explicit, Mapping):
        raise SplitError(
            f"split.cases: expected a mapping {{train: [...], valid: [...], test: [...]}}, got {explicit!r}"
        )
    unknown_keys = [str(k) for k in explicit if k not in SPLITS]
    if unknown_keys:
        raise SplitError(f"split.cases: unknown split(s) {unknown_keys}; use {list(SPLITS)}")
    lists = {s: _as_id_list(explicit.get(s), f"split.cases.{s}") for s in SPLITS}
    known_set = set(known)
    unknown = sorted({c for ids in lists.values() for c in ids if c not in known_set})
    if unknown:
        raise SplitError(f"split.cases: unknown case(s) {_shorten(unknown)}; known cases: {_shorten(known)}")
    where: dict[str, str] = {}
    for split in SPLITS:
        for case in lists[split]:
            if case in where:
                first = where[case]
                if first == split:
                    raise SplitError(f"split.cases.{split}: case {case!r} is listed twice")
                raise SplitError(f"split.cases: case {case!r} is in both {first} and {split}")
            where[case] = split
    if require_all:
        missing = [c for c in known if c not in where]
        if missing:
            raise SplitError(
                f"split.cases: case(s) not in any split: {_shorten(missing)}; list every case in train, valid or test"
            )
    return {s: sorted(lists[s]) for s in SPLITS}


def _check_folds(folds: int | None, fold: int | None) -> tuple[int, int] | None:
    if folds is None:
        if fold is not None:
            raise SplitError(f"split.fold: {fold!r} given without split.folds; set split.folds (>= 2) too")
        return None
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise SplitError(f"split.folds: expected an integer >= 2, got {folds!r}")
    if fold is None:
        raise SplitError(f"split.fold: required with split.folds={folds}; choose 0..{folds - 1}")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < folds:
        raise SplitError(f"split.fold: expected an integer in 0..{folds - 1} (split.folds={folds}), got {fold!r}")
    return int(folds), int(fold)


def _ratio_split(cases: list[str], ratios: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    counts = _counts(len(cases), ratios)
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    out, start = {}, 0
    for split in SPLITS:
        out[split] = sorted(order[start : start + counts[split]])
        start += counts[split]
    return out


def fold_table(cases: Sequence[str], *, folds: int, seed: int, test: Sequence[str] = ()) -> dict[str, int]:
    """Case -> fold index (0..folds-1) for every case not in ``test``, sorted by case id.

    The non-test cases, sorted, are shuffled with ``numpy.random.default_rng(seed)``
    and cut into ``folds`` contiguous folds of near-equal size (``numpy.array_split``:
    sizes differ by at most one, the first ``n mod folds`` folds are the larger).
    Needs at least ``folds`` non-test cases.
    """
    known = _check_cases(cases)
    seed = _check_seed(seed)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise SplitError(f"split.folds: expected an integer >= 2, got {folds!r}")
    test_ids = set(_as_id_list(test, "split.cases.test"))
    unknown = sorted(test_ids - set(known))
    if unknown:
        raise SplitError(f"split.cases.test: unknown case(s) {_shorten(unknown)}")
    pool = [c for c in known if c not in test_ids]
    if len(pool) < folds:
        raise SplitError(
            f"split.folds: {folds} folds need at least {folds} cases outside the test split, got {len(pool)}"
        )
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    table = {}
    for index, chunk in enumerate(np.array_split(np.arange(len(order)), int(folds))):
        for i in chunk:
            table[order[int(i)]] = index
    return dict(sorted(table.items()))


def split_cases(
    cases: Sequence[str],
    *,
    ratios: Mapping[str, float] | None = None,
    explicit: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    folds: int | None = None,
    fold: int | None = None,
) -> dict[str, list[str]]:
    """Split case ids by patient into ``{"train": [...], "valid": [...], "test": [...]}``.

    Give ``ratios`` or ``explicit`` (not both; neither means :data:`DEFAULT_RATIOS`),
    optionally with ``folds``/``fold`` for k-fold cross-validation; see the module
    docstring for the rules. Every case is in exactly one split; lists are sorted.
    The result depends only on the set of cases and the arguments (not on the order
    of ``cases``). With ``folds``, ``explicit`` decides only the test split: listed
    train/valid cases must still be known and disjoint, but the folds decide between
    train and valid, and unlisted cases join the folds.
    """
    known = _check_cases(cases)
    seed = _check_seed(seed)
    kfold = _check_folds(folds, fold)
    if ratios is not None and explicit is not None:
        raise SplitError("split.ratios and split.cases are both set; give one of them (set the other to null)")

    if explicit is not None:
        chosen = _check_explicit(explicit, known, require_all=kfold is None)
        if kfold is None:
            return chosen
        test = chosen["test"]
    else:
        checked = _check_ratios(DEFAULT_RATIOS if ratios is None else ratios)
        if kfold is None:
            return _ratio_split(known, checked, seed)
        # The same test cases as the plain ratio split with this seed; train + valid form the pool.
        # (The plain split is feasible whenever the folds are: they need more cases.)
        if len(known) < kfold[0] + (checked["test"] > 0):
            raise SplitError(
                f"split.folds: {kfold[0]} folds need at least {kfold[0]} cases outside the test split, "
                f"got {len(known)} cases in all"
            )
        test = _ratio_split(known, checked, seed)["test"]

    k_folds, k = kfold
    table = fold_table(known, folds=k_folds, seed=seed, test=test)
    return {
        "train": sorted(c for c, f in table.items() if f != k),
        "valid": sorted(c for c, f in table.items() if f == k),
        "test": sorted(test),
    }
