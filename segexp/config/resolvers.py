"""The OmegaConf resolvers segexp's configs use, and :func:`register_resolvers` to install them.

* ``${project_root:}`` (:func:`project_root`): ``$SEGEXP_ROOT``, else the segexp checkout, else the cwd.
* ``${len:${dataset.class_names}}`` (:func:`class_count`): the model's class count follows the dataset's.
* ``${cores:8}`` (:func:`usable_cores`): min(8, usable CPU cores), e.g. loader workers that fit the machine.
* ``${losses:}`` (:func:`loss_choices`): every loss of the ``loss`` group (``conf/loss/*.yaml``), e.g. an Optuna
  search's loss choice; ``${losses:bce_dice}`` leaves the ones named out.
* ``${optuna_storage:${tracking.uri},${paths.output_dir}}`` (:func:`optuna_storage`): where Optuna searches keep
  their studies, beside the tracking store.

Resolvers that read a higher layer come from that layer as a table of their own, passed in by whoever
composes a config that uses them: ``${networks:}``, every registered network (the Optuna search's model
choice), is :data:`segexp.models.RESOLVERS`.

Nothing is registered on import: whoever composes or resolves a config (each command shell,
:func:`segexp.planning.plan.compose_train`, the tests' ``conftest.py``, the scripts) calls
:func:`register_resolvers` first; calling it again changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segexp.config.schema import NO_CLASS_TABLE, REPO_DIR, loss_names
from segexp.core.files import sqlite_folder

#: The study database's name beside the tracking store (a file next to SQLite's, a database on a server).
OPTUNA_DATABASE = "optuna"
#: URI schemes of SQL servers (SQLAlchemy dialects, with or without ``+driver``) whose server can hold the studies.
SQL_SERVERS = ("postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle")


def project_root() -> str:
    """Project root for derived paths: ``$SEGEXP_ROOT``, else the segexp checkout, else the cwd."""
    env = os.environ.get("SEGEXP_ROOT")
    if env:
        return str(Path(env).expanduser().resolve())
    if (REPO_DIR / "pyproject.toml").is_file():
        return str(REPO_DIR)
    return str(Path.cwd())


def class_count(seq: Any) -> int:
    """``${len:...}``; a null sequence (a class table never resolved) is an error saying so."""
    if seq is None:
        raise ValueError(NO_CLASS_TABLE)
    return len(seq)


def usable_cores(cap: int | None = None) -> int:
    """CPU cores this process may run on (its affinity mask), at most ``cap``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, int(cap))) if cap is not None else max(1, cores)


def loss_choices(*leave_out: str) -> str:
    """``${losses:}``: every loss of ``conf/loss/`` but those of ``leave_out``, sorted and comma-separated, as
    Hydra's ``choice(...)`` takes them; a name in ``leave_out`` that is not a loss is an error (no silent typo)."""
    names = loss_names()
    unknown = [n for n in leave_out if n not in names]
    if unknown:
        raise ValueError(f"${{losses:...}}: {unknown} are not losses of conf/loss/; expected some of {names}")
    return ", ".join(n for n in names if n not in leave_out)


def optuna_storage(tracking_uri: str, output_dir: str) -> str:
    """Where Optuna keeps studies, beside the tracking store ``tracking_uri``: ``optuna.db`` in the folder of an
    SQLite store's file, the database ``optuna`` on the server of an SQL database URI, else
    ``<output_dir>/optuna.db`` (an MLflow server's backend is not known here: tracking=server names it). Never the
    MLflow database itself: Optuna and MLflow each keep an ``alembic_version`` table of their own."""
    folder = sqlite_folder(tracking_uri)
    if folder is not None:
        return f"sqlite:///{folder / f'{OPTUNA_DATABASE}.db'}"
    if tracking_uri.split(":", 1)[0].split("+", 1)[0] in SQL_SERVERS:
        from sqlalchemy.engine import make_url  # deferred: only database URIs need it

        return make_url(tracking_uri).set(database=OPTUNA_DATABASE).render_as_string(hide_password=False)
    return f"sqlite:///{Path(output_dir) / f'{OPTUNA_DATABASE}.db'}"


#: Resolver name -> function, as the YAML files under ``conf/`` call them.
RESOLVERS: dict[str, Callable[..., Any]] = {
    "project_root": project_root,
    "len": class_count,
    "cores": usable_cores,
    "losses": loss_choices,
    "optuna_storage": optuna_storage,
}


def register_resolvers(*more: Mapping[str, Callable[..., Any]]) -> None:
    """Register every resolver of :data:`RESOLVERS` and of the tables ``more`` (a higher layer's, e.g.
    :data:`segexp.models.RESOLVERS`) that OmegaConf does not know yet (idempotent)."""
    for table in (RESOLVERS, *more):
        for name, resolver in table.items():
            if not OmegaConf.has_resolver(name):
                OmegaConf.register_new_resolver(name, resolver)
