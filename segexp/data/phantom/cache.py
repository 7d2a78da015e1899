"""A generated-folder cache: a folder one generator owns, rebuilt only when its parameters change.

The folder's manifest (``<root>/<manifest>``, JSON) records the generator, ``complete``, the
parameters and the entries (top-level files or folders) the generator wrote. :func:`ensure_generated`

* reuses the folder when the manifest is complete, its parameters equal the requested ones and
  the files are all there (the caller's completeness check);
* otherwise builds the new content into a hidden staging sibling (:func:`segexp.core.files.staging_folder`)
  and moves it into place: one rename of the whole folder when ``root`` is absent or empty, else
  entry by entry, deleting only the entries the old manifest lists and writing the complete
  manifest last;
* refuses (:class:`FileExistsError`) a non-empty folder without its manifest, or a new entry
  whose name is taken by something the old manifest does not list.

Nothing here knows what is generated; the phantom writers are two users.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segexp.core.files import atomic_write_text, staging_folder

__all__ = ["GeneratedFolder", "ensure_generated", "read_manifest", "write_json"]

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class GeneratedFolder:
    """What makes a folder one generator's: the manifest file, its ``generator`` value, the entries key."""

    manifest: str  # file name of the manifest in the folder, e.g. ``phantom.json``
    generator: str  # the manifest's ``generator``: a folder with another one is not ours
    entries_key: str  # manifest key listing the entries the generator owns (and may delete)
    what: str  # the folder's kind in messages, e.g. ``phantom``
    complete: Callable[[Path, Manifest], bool]  # every file the manifest promises is present
    check_entry: Callable[[str], None]  # raises ValueError for an entry name a manifest must not list


def read_manifest(root: Path, name: str, generator: str) -> dict[str, Any] | None:
    """The manifest ``root/name`` written by ``generator``, or ``None`` if there is none or it is not ours."""
    path = root / name
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != generator:
        return None
    return manifest


def write_json(path: Path, data: Manifest) -> None:
    """Write ``data`` as indented JSON plus a newline, atomically (:func:`segexp.core.files.atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def ensure_generated(
    folder: GeneratedFolder,
    root: Path,
    params: Manifest,
    entries: Sequence[str],
    build: Callable[[Path], Manifest],
) -> bool:
    """Make ``root`` hold the content generated with ``params``; returns whether it was built (else reused).

    ``build(staging)`` writes ``entries`` into the empty folder ``staging`` and returns the rest of
    the manifest; the manifest written is ``{generator, complete, params, <entries_key>: entries}``
    followed by those fields.
    """
    params, entries = dict(params), [str(entry) for entry in entries]
    manifest = _inspect_root(folder, root)
    if manifest is not None and _reusable(folder, root, manifest, params):
        return False
    old_entries = None if manifest is None else _owned_entries(folder, manifest)
    _check_no_clash(folder, root, entries, old_entries)
    with staging_folder(root) as tmp:
        header = {"generator": folder.generator, "complete": True, "params": params, folder.entries_key: entries}
        new_manifest = {**header, **build(tmp)}
        write_json(tmp / folder.manifest, new_manifest)
        _install(folder, tmp, root, new_manifest, old_entries)
    return True


def _reusable(folder: GeneratedFolder, root: Path, manifest: Manifest, params: Manifest) -> bool:
    """``root`` holds complete content generated with exactly ``params``."""
    return manifest.get("complete") is True and manifest.get("params") == params and folder.complete(root, manifest)


def _owned_entries(folder: GeneratedFolder, manifest: Manifest) -> list[str]:
    """The entries an old manifest lists as ours, each checked by ``folder.check_entry``."""
    raw = manifest.get(folder.entries_key, [])
    owned = [str(entry) for entry in raw if isinstance(entry, str)] if isinstance(raw, list) else []
    for entry in owned:
        folder.check_entry(entry)
    return owned


def _inspect_root(folder: GeneratedFolder, root: Path) -> dict[str, Any] | None:
    """Before writing into ``root``: its manifest if the folder is ours, ``None`` if absent or empty.

    Raises :class:`FileExistsError` naming ``root`` for a file, or a non-empty folder
    without our manifest (nothing is touched then).
    """
    if not root.exists():
        return None
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder, so it is not a segexp {folder.what} folder")
    manifest = read_manifest(root, folder.manifest, folder.generator)
    if manifest is None and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and has no {folder.manifest}, so it is not a segexp {folder.what} folder; "
            "refusing to write into it (choose another folder or empty it)"
        )
    return manifest


def _check_no_clash(folder: GeneratedFolder, root: Path, new_entries: Sequence[str], owned: list[str] | None) -> None:
    """Refuse to replace an entry of ``root`` that the old manifest does not list as ours."""
    if owned is None:  # root absent or empty
        return
    mine = set(owned)
    for entry in new_entries:
        path = root / entry
        if entry not in mine and (path.exists() or path.is_symlink()):
            raise FileExistsError(
                f"{path} exists but was not written by the segexp {folder.what} generator; "
                "refusing to replace it (move it away or choose another folder)"
            )


def _remove(path: Path) -> None:
    """Delete the file, link or folder ``path``; :class:`OSError` if it is still there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    if path.exists() or path.is_symlink():
        raise OSError(f"could not remove {path}, an old entry of a generated folder")


def _install(folder: GeneratedFolder, tmp: Path, root: Path, manifest: Manifest, old_entries: list[str] | None) -> None:
    """Move the generated entries ``manifest[entries_key]`` and the manifest from ``tmp`` into ``root``.

    ``old_entries is None`` (``root`` absent or empty): one rename of ``tmp``. Otherwise
    ``root`` holds our old content: its manifest is first rewritten as incomplete,
    owning the old and the new entries, so an interruption below leaves a folder that
    is recognised and regenerated; then the old entries are deleted (nothing else),
    the new ones moved in, and the complete manifest replaces the old one last.
    """
    if old_entries is None:
        _rename_or_keep_theirs(folder, tmp, root)
        return
    new_entries = [str(e) for e in manifest[folder.entries_key]]
    owned = list(dict.fromkeys([*old_entries, *new_entries]))
    write_json(root / folder.manifest, {**manifest, "complete": False, folder.entries_key: owned})
    for entry in owned:
        _remove(root / entry)
    for entry in new_entries:
        (tmp / entry).rename(root / entry)
    os.replace(tmp / folder.manifest, root / folder.manifest)
    tmp.rmdir()


def _rename_or_keep_theirs(folder: GeneratedFolder, tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to the absent or empty ``root``; if another process filled ``root`` first with the
    same manifest (a parallel sweep job), keep theirs and delete ``tmp``, else re-raise."""
    try:
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except OSError:
        try:
            same = json.loads((root / folder.manifest).read_text()) == json.loads((tmp / folder.manifest).read_text())
        except (OSError, ValueError):
            same = False
        if not same:
            raise
        shutil.rmtree(tmp)
