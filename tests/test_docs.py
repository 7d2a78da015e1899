"""The documentation works: every relative link of README.md, docs/*.md, ACCURACY.md and BENCHMARKS.md resolves
(file and anchor), and every single-run command in their ``bash`` blocks composes with its overrides."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from segexp.config.schema import CONF_DIR, REPO_DIR, expand_aliases, loss_names
from segexp.models import networks

PAGES = [REPO_DIR / "README.md", *sorted((REPO_DIR / "docs").rglob("*.md")), REPO_DIR / "ACCURACY.md",
         REPO_DIR / "BENCHMARKS.md"]  # fmt: skip
#: The Hydra commands and the config each composes.
COMMANDS = {"segexp-train": "train", "segexp-evaluate": "evaluate", "segexp-infer": "infer",
            "segexp-prepare": "prepare", "segexp-check": "check", "segexp-plan": "segexp_plan"}  # fmt: skip


def _outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of ``page``: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in _outside_code(page.read_text()):
        if m := re.match(r"^#+ (.*)", line):
            found.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return found


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", "\n".join(_outside_code(page.read_text()))):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target) if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO_DIR)}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(REPO_DIR)}: {link} (no such heading)")
    assert broken == []


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(page, command, overrides)`` of every single-run Hydra command line in the pages' bash blocks; sweeps
    (``-m``), ``--cfg`` and lines with placeholders (``<...>``, ``...``, ``dataset=my_set``) or shell plumbing
    are left out."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # continuation lines joined
                words = shlex.split(line, comments=True)
                if not words or any(s in line for s in ("<", "&&", "|", "$", "...", "=my_")):
                    continue
                if words[0] in COMMANDS and not any(w in ("-m", "--multirun") or w.startswith("--") for w in words):
                    found.append((page.name, words[0], words[1:]))
    return found


@pytest.mark.parametrize(("page", "command", "overrides"), documented_commands())
def test_documented_commands_compose(page: str, command: str, overrides: list[str]) -> None:
    overrides = [o for o in overrides if not o.startswith("experiment=plan_")]  # written by segexp-plan
    if command == "segexp-train":  # its shell spells out the aliases (hparams_search.pruner=median)
        overrides = expand_aliases(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compose(config_name=COMMANDS[command], overrides=overrides)


def test_every_network_is_documented() -> None:
    """docs/models.md names every registered network as ``model=<name>`` or in its zoo table (`` `<name>` ``)."""
    text = (REPO_DIR / "docs" / "models.md").read_text()
    assert [n for n in networks() if f"model={n}" not in text and f"| `{n}` |" not in text] == []


def test_every_loss_is_documented() -> None:
    """docs/recipe.md names every loss of ``conf/loss/`` as ``loss=<name>``, and README's group table lists it."""
    text = (REPO_DIR / "docs" / "recipe.md").read_text()
    (row,) = [line for line in (REPO_DIR / "README.md").read_text().splitlines() if line.startswith("| `loss` |")]
    assert [n for n in loss_names() if f"loss={n}" not in text or f"`{n}`" not in row] == []
