"""File helpers every layer shares: files written whole or not at all, staging folders, usable folders.

* :func:`atomic_write_path` writes a file under a temporary name in the same folder and
  renames it into place (:func:`os.replace`) only when it is complete; :func:`atomic_write_text`
  does that for a text.
* :func:`staging_folder` is a hidden sibling folder to build a dataset in, moved into place when done.
* :func:`check_writable` / :func:`check_output_locations` find unwritable or (nearly) full
  output locations at start-up, before any data is read.
* :func:`sqlite_path` / :func:`sqlite_folder`: the file of a ``sqlite:///…`` store URI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from segexp.core.errors import OutputError

#: Default of ``paths.min_free_mb``: less free space than this at start-up is an error.
DEFAULT_MIN_FREE_MB = 200.0


@contextmanager
def atomic_write_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block ends without error.

    ``durable``: fsync the file before the rename (checkpoints that must survive a power cut).

    The temporary name keeps the extension (``.tmp-<id>-best.keras``), so writers that pick the
    format from it (OpenCV, nibabel, Keras) work unchanged; on an error it is deleted and
    ``path`` keeps its previous content (or stays absent)::

        with atomic_write_path(out / "summary.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write_path`."""
    with atomic_write_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``target`` to build a dataset in, removed on exit if still there.

    A sibling lives on the same file system, so moving the finished folder (or its entries)
    into ``target`` is a rename: readers never see a half-written dataset. The one staging
    step of ``segexp-prepare`` and the phantom writers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_writable(folder: Path, what: str, min_free_mb: float = DEFAULT_MIN_FREE_MB) -> None:
    """Create ``folder`` if needed, write and delete a temporary file in it, check its free space.

    ``what`` names the setting that chose the folder (``paths.output_dir``) for the message.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".segexp-write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as err:
        raise OutputError(
            f"{what} = {folder}: cannot write there ({err.strerror or err}); "
            f"choose a writable folder or fix its permissions"
        ) from err
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputError(
            f"{what} = {folder}: only {free_mb:.0f} MB free, less than paths.min_free_mb = {min_free_mb:g} MB; "
            "free some space, choose another folder, or lower paths.min_free_mb"
        )


def check_output_locations(locations: Sequence[tuple[str, Path]], min_free_mb: float) -> None:
    """:func:`check_writable` for every ``(what, folder)``; all problems in one :class:`OutputError`."""
    problems = []
    for what, folder in locations:
        try:
            check_writable(folder, what, min_free_mb)
        except OutputError as err:
            problems.append(str(err))
    if problems:
        raise OutputError("output location problem:\n  " + "\n  ".join(problems))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` store URI (MLflow, Optuna), else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///…`` tracking store, else None."""
    path = sqlite_path(uri)
    return None if path is None else path.parent
