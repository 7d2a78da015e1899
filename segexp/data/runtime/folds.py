"""Cross-validation folds of a dataset section: which cases fold ``cv.fold`` of ``cv.folds`` trains and validates on.

The pool of cases that the folds share, by the folder's layout (:func:`segexp.data.io.layout.detect_layout`):

* a flat folder (``<root>/images`` + ``<root>/masks``): every case found by ``dataset.case_pattern`` on the file
  names, minus ``cv.test_cases``, which become the test split (``dataset.cases`` is not used: the folds replace
  any split it names);
* split folders (``<root>/{train,valid,test}/...``, a ``segexp-prepare`` output): the cases of the train and valid
  folders pooled; the test folder stays the test split.

The pool is cut into ``cv.folds`` folds by :func:`segexp.data.io.splits.fold_table` (sorted, shuffled with
``numpy.random.default_rng(cv.seed)``, contiguous near-equal folds), so every fold of one CV sees the same
partition and together the folds validate every pooled case exactly once, as nnU-Net's 5-fold default. Fold
``k`` validates on fold ``k``'s cases and trains on the others. A class table discovered from the masks is read
over the whole pool (a structure rare enough to sit in one fold's validation cases only is still a class).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from segexp.config.options import Layout
from segexp.core.errors import DataError, SplitError
from segexp.data.io.layout import detect_layout
from segexp.data.io.slices import SlicePair, find_pairs
from segexp.data.io.splits import fold_table
from segexp.data.phantom import ensure_phantom_slices
from segexp.data.runtime.class_table import class_names_given, with_class_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folds:
    """The partition of one CV: ``table`` case -> fold, the ``test`` cases, the ``layout``, and ``fold``'s split."""

    folds: int
    fold: int
    layout: str
    table: dict[str, int]
    test: list[str] = field(default_factory=list)

    def cases(self) -> dict[str, list[str]]:
        """``{train, valid, test}`` case ids of this fold."""
        return {
            "train": sorted(c for c, f in self.table.items() if f != self.fold),
            "valid": sorted(c for c, f in self.table.items() if f == self.fold),
            "test": sorted(self.test),
        }

    def lines(self) -> list[str]:
        cases = self.cases()
        lines = [f"cross-validation fold {self.fold} of {self.folds} over {len(self.table)} cases ({self.layout})"]
        lines += [f"  {split}: {len(ids)} case(s) {', '.join(ids)}" for split, ids in cases.items() if ids]
        return lines


def _pairs(d: Mapping[str, Any], folder: Path) -> list[SlicePair]:
    return find_pairs(folder / str(d["images_dir"]), folder / str(d["masks_dir"]), str(d["case_pattern"]))


def pooled_pairs(d: Mapping[str, Any]) -> tuple[str, list[SlicePair], list[SlicePair]]:
    """``(layout, pairs of the pooled cases, pairs of the test split)`` of dataset section ``d`` for cross-validation
    (module docstring); ``test_cases`` as in ``cv.test_cases`` must be read by the caller for a flat folder."""
    root = Path(str(d["root"])).expanduser()
    layout = detect_layout(d)
    if layout == Layout.splits:
        splits = d["splits"]
        pool = [p for s in ("train", "valid") for p in _pairs(d, root / str(splits[s]))]
        test_folder = root / str(splits["test"])
        test = _pairs(d, test_folder) if (test_folder / str(d["images_dir"])).is_dir() else []
        return layout, pool, test
    return layout, _pairs(d, root), []


def assign_folds(d: Mapping[str, Any], folds: int, fold: int, seed: int, test_cases: list[str]) -> Folds:
    """The folds of dataset section ``d`` (module docstring). Raises :class:`DataError` naming the key when the
    pool has fewer cases than folds, or a ``cv.test_cases`` entry is unknown or given for split folders."""
    layout, pool, test = pooled_pairs(d)
    found = sorted({p.case for p in pool})
    if layout == Layout.splits:
        if test_cases:
            raise DataError(
                f"cv.test_cases: {test_cases} given, but {d['root']} has one folder per split: its test folder is the "
                "test split; leave cv.test_cases empty"
            )
        test_ids = sorted({p.case for p in test})
    else:
        unknown = sorted(set(test_cases) - set(found))
        if unknown:
            raise DataError(f"cv.test_cases: unknown case(s) {unknown}; the cases in {d['root']} are {found}")
        test_ids = sorted(test_cases)
    try:
        table = fold_table(found, folds=folds, seed=seed, test=test_ids if layout == Layout.flat else ())
    except SplitError as err:
        raise DataError(f"cv.folds: {err} (cases in {d['root']}: {', '.join(found)})") from err
    return Folds(folds, fold, layout, table, test_ids)


def with_fold(d: DictConfig, cv: Mapping[str, Any]) -> tuple[DictConfig, Folds]:
    """A copy of dataset section ``d`` that trains on fold ``cv.fold`` of ``cv.folds`` and the folds.

    The copy names the fold's cases (``layout`` flat or splits, ``cases`` {train, valid, test}), so the run's
    recorded config, ``segexp-evaluate`` and a resume read the same split; a class table not given is filled in
    from the whole pool first. The copy keeps ``d``'s flags and parent (as :func:`with_class_table`).
    """
    ensure_phantom_slices(Path(str(d["root"])).expanduser(), d.get("phantom"))  # the built-in data, made once
    folds = assign_folds(d, int(cv["folds"]), int(cv["fold"]), int(cv["seed"]), [str(c) for c in cv["test_cases"]])
    section = copy.deepcopy(d)
    if not class_names_given(section):
        _, pool, test = pooled_pairs(section)
        in_test = set(folds.test)
        pairs = {
            "train": [p for p in pool if p.case not in in_test],
            "valid": [],
            "test": [*test, *(p for p in pool if p.case in in_test)],
        }
        section, table = with_class_table(section, pairs)
        for line in table.lines():
            log.info(line)
    with read_write(section), open_dict(section):
        section.layout = folds.layout
        section.cases = folds.cases()
    return section, folds
