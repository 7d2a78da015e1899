"""Every config preset composes and validates; impossible values fail naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from segexp.config.schema import CONF_DIR, ConfigError
from segexp.data.io.slices import DataError
from segexp.data.runtime.dataset import open_dataset
from segexp.training.loop import validate_run_config

from .conftest import compose_config

FOLDER_KEYS = (
    "dataset.root=/data",
    "dataset.class_names=[background,fg]",
    "dataset.rgb_map={background:[0,0,0],fg:[255,255,255]}",
    "model.num_classes=2",
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


PRESETS = [
    (g, o)
    for g in ("model", "dataset", "augmentation", "training", "tracking", "paths", "experiment", "debug")
    for o in _options(g)
]


@pytest.mark.parametrize(("group", "option"), PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_preset_composes_and_validates(group: str, option: str) -> None:
    extra = {("dataset", "folder"): FOLDER_KEYS, ("model", "flexunet_hocm"): ("dataset=hocmvalves",)}.get(
        (group, option), ()
    )
    cfg = compose_config([f"{group}={option}", *extra])
    typed = validate_run_config(cfg)
    assert typed.model.num_classes >= 1


def test_every_group_has_presets() -> None:
    for group in ("model", "dataset", "augmentation", "training", "tracking", "paths", "experiment", "debug"):
        assert _options(group), group
    assert {"none", "flips", "full"} <= set(_options("augmentation"))
    assert {"flexunet", "flexunet_hocm"} <= set(_options("model"))
    assert {"folder", "hocmvalves", "phantom"} <= set(_options("dataset"))


def _commented(lines: list[str], i: int) -> bool:
    return "#" in lines[i] or (i > 0 and lines[i - 1].strip().startswith("#"))


def test_every_yaml_key_is_commented() -> None:
    """Each key has a comment on its line or the line above, or sits in a commented block."""
    uncommented = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped or _commented(lines, i):
                continue
            indent = len(line) - len(line.lstrip())
            parent = next(
                (
                    j
                    for j in range(i - 1, -1, -1)
                    if lines[j].strip()
                    and not lines[j].strip().startswith("#")
                    and len(lines[j]) - len(lines[j].lstrip()) < indent
                ),
                None,
            )
            if parent is None or not _commented(lines, parent):
                uncommented.append(f"{path.relative_to(CONF_DIR)}:{i + 1}: {stripped}")
    assert not uncommented, "\n".join(uncommented)


def test_kernel_override_from_issue() -> None:
    cfg = validate_run_config(compose_config(["model.base_kernels=[11,11]", "training.epochs=2"]))
    assert list(cfg.model.base_kernels) == [11, 11]


def test_hocm_experiment_is_the_original_model() -> None:
    cfg = validate_run_config(compose_config(["experiment=hocmvalves"]))
    m = cfg.model
    assert (m.image_height, m.image_width, m.image_channels, m.num_classes) == (512, 512, 3, 8)
    assert (m.base_filters, list(m.base_kernels), m.num_layers, m.dropout_rate, list(m.dilation)) == (
        16,
        [11, 11],
        8,
        0.05,
        [1, 1],
    )
    assert cfg.dataset.name == "hocmvalves" and len(cfg.dataset.rgb_map) == 8


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.base_kernels=[4,4]"], "model.base_kernels"),
        (["model.base_kernels=[3,3,3]"], "model.base_kernels"),
        (["model.image_height=100"], "model.image_height"),
        (["model.num_layers=9"], "model.image_width"),
        (["model.dropout_rate=1.5"], "model.dropout_rate"),
        (["model.dropout_rate=0.3"], "model.dropout_rate"),  # 0.3 * 4 >= 1 at the bottleneck
        (["model.dilation=[0,1]"], "model.dilation"),
        (["model.image_channels=0"], "model.image_channels"),
        (["model.num_classes=4"], "model.num_classes"),
        (["+model.base_filter=8"], "model.base_filter"),
        (["model.num_layers=five"], "model.num_layers"),
        (
            ["callbacks=reduce_lr", "training.schedule=null", "callbacks.reduce_lr.factor=1.5"],
            "callbacks.reduce_lr.factor",
        ),
        (["loss._target_=focal"], "loss._target_"),
        (["training.learning_rate=-1"], "training.learning_rate"),
        (["training.monitor_mode=up"], "training.monitor_mode"),
        (["augmentation=full", "augmentation.transforms.rotate.p=1.2"], "augmentation.transforms.rotate.p"),
        (["dataset.rgb_map.LV=[255,0,0]"], "dataset.rgb_map"),
        (["dataset.mask_format=jpeg"], "dataset.mask_format"),
        (["dataset=hocmvalves_mini", "dataset.cases.valid=['10001']"], "dataset.cases"),
        (["training.epoch_images.dir=/no/such/folder"], "training.epoch_images.dir"),
        (["tracking.uri=file:/tmp/mlruns"], "tracking.uri"),
        (["tracking.uri=./mlruns"], "tracking.uri"),
    ],
)
def test_invalid_values_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_run_config(compose_config(overrides))


def test_file_store_is_refused_only_where_mlflow_refuses_it(monkeypatch) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true; databases, servers and runs without
    tracking pass."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=r"sqlite:///<folder>/mlflow\.db"):
        validate_run_config(compose_config(["tracking.uri=/tmp/mlruns"]))
    for overrides in (["tracking.uri=sqlite:////tmp/x.db"], ["tracking.uri=http://127.0.0.1:5000"], ["tracking=none"]):
        validate_run_config(compose_config(overrides))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    validate_run_config(compose_config(["tracking.uri=file:/tmp/mlruns"]))


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        validate_run_config(compose_config(["model.base_kernels=[4,4]", "model.dropout_rate=2", "loss._target_=x"]))
    text = str(info.value)
    assert "model.base_kernels" in text and "model.dropout_rate" in text and "loss._target_" in text


def test_command_line_typo_is_rejected_by_hydra() -> None:
    with pytest.raises(ConfigCompositionException, match="base_filterz"):
        compose_config(["model.base_filterz=8"])


def test_values_are_data_not_code(tmp_path) -> None:
    """A Python expression in a value stays a string; nothing is evaluated."""
    cfg = compose_config(["task_name='__import__(\"os\").getcwd()'"])
    assert validate_run_config(cfg).task_name == '__import__("os").getcwd()'


def test_missing_dataset_folder_names_the_key(tmp_path) -> None:
    cfg = validate_run_config(compose_config([*FOLDER_KEYS[1:], "dataset=folder", f"dataset.root={tmp_path}/absent"]))
    with pytest.raises(DataError, match=r"dataset\.root: folder .*absent does not exist"):
        open_dataset(cfg.dataset, cfg.model.num_classes)


def test_default_paths_derive_from_root(tmp_path) -> None:
    cfg = compose_config([f"paths.root={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["tracking"]["uri"] == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert resolved["dataset"]["root"] == f"{tmp_path}/outputs/data/phantom"


def test_loader_workers_default_to_usable_cores_up_to_8(monkeypatch) -> None:
    """``training.loader.workers: ${cores:8}`` follows the CPU cores this process may use, capped at 8."""
    import os

    from segexp.config.resolvers import usable_cores

    for cores, expected in ((set(range(2)), 2), (set(range(16)), 8), ({0}, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: c, raising=False)
        assert usable_cores(8) == expected and usable_cores() == len(cores)
        assert validate_run_config(compose_config()).training.loader.workers == expected
