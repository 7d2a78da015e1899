"""Where a slice folder's splits are: ``dataset.layout: auto`` and the automatic patient split.

A user's first run names only the folder (``segexp-train dataset=folder dataset.root=/data/x``);
:func:`resolve_layout` reads its shape:

* ``<root>/<splits.train>/<images_dir>`` exists -> ``splits`` (one folder per split; the
  valid folder must exist too, the test folder is optional);
* else ``<root>/<images_dir>`` exists -> ``flat`` (one folder for all slices);
* with ``dataset.cases`` named -> ``flat`` with those cases.

A ``flat`` folder without ``dataset.cases`` is split **by patient** (the ``case`` group of
``dataset.case_pattern`` on each file stem), never by slice, with
:func:`segexp.data.io.splits.split_cases` and a fixed seed (:data:`AUTO_SPLIT_SEED`), so every
training seed of one folder sees the same split:

* 5 cases or more: :data:`segexp.data.io.splits.DEFAULT_RATIOS` (70 / 15 / 15 % train / valid /
  test, largest-remainder counts, at least one case each);
* 2 to 4 cases: :data:`FEW_CASES_RATIOS` (80 / 20 % train / valid, no test split);
* fewer: an error (a validation patient is needed to pick the best epoch).

:func:`with_layout` writes the resolved ``layout`` and ``cases`` into the config section, so
the run's recorded config (``.hydra/config.yaml``, MLflow params) names every case of every
split and ``segexp-evaluate`` / ``segexp-infer`` / a resume read the same split.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from segexp.config.options import Layout
from segexp.core.errors import DataError, SplitError
from segexp.data.io.slices import IMAGE_SUFFIXES, find_pairs
from segexp.data.io.splits import DEFAULT_RATIOS, split_cases

#: Seed of the automatic patient split: fixed, so runs with different ``seed`` share one split.
AUTO_SPLIT_SEED = 0
#: Fewer cases than this get no automatic test split (every patient counts for training).
MIN_CASES_FOR_TEST = 5
#: The automatic split's ratios below :data:`MIN_CASES_FOR_TEST` cases.
FEW_CASES_RATIOS: Mapping[str, float] = {"train": 0.8, "valid": 0.2, "test": 0.0}


@dataclass(frozen=True)
class ResolvedLayout:
    """The concrete layout of a dataset section: ``splits`` or ``flat`` (with ``cases``), and how it was found."""

    layout: str
    cases: dict[str, list[str]] = field(default_factory=dict)
    source: str = "config"

    def lines(self) -> list[str]:
        """Log lines: the source, and for an automatic split the cases of each split."""
        if self.source == "config":
            return []
        lines = [f"dataset layout {self.layout}: {self.source}"]
        lines += [f"  {split}: {len(ids)} case(s) {', '.join(ids)}" for split, ids in self.cases.items() if ids]
        return lines


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(
        p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") for p in folder.iterdir()
    )


def _cases_given(cases: Any) -> bool:
    return bool(cases) and any(bool(ids) for ids in cases.values())


def resolve_layout(d: Mapping[str, Any]) -> ResolvedLayout:
    """The concrete layout of dataset section ``d`` (dict or DictConfig); see the module docstring.

    ``layout: splits``, and ``layout: flat`` with ``cases``, are returned as configured.
    Raises :class:`DataError` naming the folders looked for, or the split that cannot be made.
    """
    layout = str(d["layout"])
    cases = d.get("cases") or {}
    if layout == Layout.splits:
        return ResolvedLayout(layout, _plain(cases))
    if _cases_given(cases):  # flat, or auto with the cases named
        return ResolvedLayout(Layout.flat, _plain(cases), "config" if layout == Layout.flat else "dataset.cases given")
    root = Path(str(d["root"])).expanduser()
    if detect_layout(d) == Layout.splits:
        return ResolvedLayout(
            Layout.splits, {}, f"{root / str(d['splits']['train']) / str(d['images_dir'])} found: one folder per split"
        )
    return _automatic_split(d, root)


def detect_layout(d: Mapping[str, Any]) -> str:
    """``splits`` or ``flat``: ``dataset.layout`` when it names one, else (``auto``) the folder's shape (module
    docstring). Raises :class:`DataError` naming the folders looked for when ``auto`` finds neither."""
    layout = str(d["layout"])
    if layout != Layout.auto:
        return layout
    root = Path(str(d["root"])).expanduser()
    images_dir, splits = str(d["images_dir"]), d["splits"]
    train = root / str(splits["train"]) / images_dir
    if train.is_dir():
        valid = root / str(splits["valid"]) / images_dir
        if not valid.is_dir():
            raise DataError(
                f"dataset.root: {train} holds the train split but {valid} does not exist; add a valid "
                f"split there, or put every slice in {root / images_dir} for an automatic split by patient"
            )
        return Layout.splits
    if not _has_images(root / images_dir):
        raise DataError(
            f"dataset.root: {root} holds neither {train} (one folder per split) nor images in "
            f"{root / images_dir} (one folder, split by patient); set dataset.root, dataset.splits or "
            "dataset.images_dir"
        )
    return Layout.flat


def _automatic_split(d: Mapping[str, Any], root: Path) -> ResolvedLayout:
    """``flat`` with cases split by patient: the cases of ``<root>/<images_dir>``, seeded :data:`AUTO_SPLIT_SEED`."""
    images = root / str(d["images_dir"])
    try:
        pairs = find_pairs(images, root / str(d["masks_dir"]), str(d["case_pattern"]))
    except DataError as err:
        raise DataError(f"{images}: no split by patient: {err}") from err
    found = sorted({p.case for p in pairs})
    if len(found) < 2:
        raise DataError(
            f"dataset.cases: {images} holds {len(found)} case ({', '.join(found)}) by "
            f"dataset.case_pattern {str(d['case_pattern'])!r}; an automatic split by patient needs at least 2 "
            "(train and valid): add patients, or name the cases of each split in dataset.cases"
        )
    ratios = DEFAULT_RATIOS if len(found) >= MIN_CASES_FOR_TEST else FEW_CASES_RATIOS
    try:
        chosen = split_cases(found, ratios=ratios, seed=AUTO_SPLIT_SEED)
    except SplitError as err:  # cannot happen for >= 2 cases; named for the user anyway
        raise DataError(f"dataset.cases: automatic split of {len(found)} cases failed: {err}") from err
    shares = "/".join(f"{100 * ratios[s]:.0f}" for s in ("train", "valid", "test"))
    source = f"{len(found)} cases in {root}, by patient {shares} % train/valid/test (seed {AUTO_SPLIT_SEED})"
    return ResolvedLayout(Layout.flat, {s: ids for s, ids in chosen.items() if ids}, source)


def _plain(cases: Any) -> dict[str, list[str]]:
    if isinstance(cases, DictConfig):
        cases = OmegaConf.to_container(cases, resolve=True)
    return {str(s): [str(c) for c in ids or []] for s, ids in dict(cases).items()}


def resolved_section(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """``d`` with ``layout`` and ``cases`` resolved (a new dict when anything changed, else ``d``)."""
    resolved = resolve_layout(d)
    if resolved.source == "config":
        return d
    return {**dict(d.items()), "layout": resolved.layout, "cases": resolved.cases}


def with_layout(d: DictConfig) -> tuple[DictConfig, ResolvedLayout]:
    """A copy of dataset section ``d`` with ``layout`` and ``cases`` resolved, and the resolution.

    A concrete layout leaves the copy as it is. The copy keeps ``d``'s flags and parent (as
    :func:`segexp.data.runtime.class_table.with_class_table`); assign it back (``cfg.dataset = section``).
    """
    resolved = resolve_layout(d)
    section = copy.deepcopy(d)
    if resolved.source != "config":
        with read_write(section), open_dict(section):
            section.layout = resolved.layout
            section.cases = resolved.cases
    return section, resolved
