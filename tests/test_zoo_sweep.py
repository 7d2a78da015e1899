"""The architecture sweep (``hparams_search=architectures``): one job per network under one MLflow parent
run, ranked by ``segexp-compare`` with the networks' own keys left out of the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from segexp.config.schema import CONF_DIR
from segexp.models import networks
from segexp.tracking.compare import changed_params, comparison_rows, per_class_metrics
from segexp.training.loop import validate_run_config

from .conftest import SHARED_DATA, compose_config

HVSMR_MINI = SHARED_DATA / "hvsmr_mini"


def sweep_models(extra: tuple[str, ...] = ()) -> list[str]:
    """The model presets the architecture sweep runs, expanded as Hydra's basic sweeper does."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=architectures", *extra], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    (override,) = OverridesParser.create().parse_overrides([f"model={cfg.hydra.sweeper.params.model}"])
    return override.value().filter(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))


def test_architecture_sweep_runs_every_network_once() -> None:
    presets = sweep_models()
    assert "flexunet_hocm" not in presets  # the original 126.8 M-parameter 512x512 model is left out
    names = [OmegaConf.load(CONF_DIR / "model" / f"{p}.yaml").name for p in presets]
    assert sorted(names) == sorted(networks()), "every registered network, each once"


@pytest.mark.parametrize("base", [["experiment=hvsmr_mini"], ["debug=fast"]], ids=["hvsmr_mini", "debug_fast"])
def test_every_network_of_the_sweep_validates_with_the_experiment(base: list[str], tmp_path: Path) -> None:
    """The planned image size (256 for hvsmr_mini's 512x512 slices; 64 with debug=fast) suits every network of
    the grid."""
    from segexp.planning.plan import make_plan

    if base == ["experiment=hvsmr_mini"] and not HVSMR_MINI.is_dir():
        pytest.skip("../shared/data/hvsmr_mini is absent")
    for preset in sweep_models():
        overrides = [*base, f"model={preset}", f"paths.output_dir={tmp_path}"]
        cfg = compose_config(overrides)
        if cfg.plan.enabled:  # the network is the sweep's; size and channels are the plan's
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg, _ = make_plan(cfg, overrides)
        typed = validate_run_config(cfg)
        assert typed.model.name == OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml").name
        if base == ["experiment=hvsmr_mini"]:
            assert (typed.model.image_height, typed.model.image_channels) == (256, 1)


def _run(name: str, params: dict[str, str], metrics: dict[str, float]) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_name=name, status="FINISHED", run_id=name),
        data=SimpleNamespace(params=params, metrics=metrics),
    )


def test_compare_shows_networks_without_their_own_keys() -> None:
    a = _run(
        "a",
        {
            "model.name": "resunet",
            "model.channels": "[16, 32]",
            "model.norm": "instance",
            "model.num_params": "1000",
            "training.seed": "1",
        },
        {"best/val_dice_fg_mean": 0.4, "test/dice/LV": 0.5, "test/dice/RV": 0.3},
    )
    b = _run(
        "b",
        {
            "model.name": "attention_unet",
            "model.filters": "[4, 8]",
            "model.norm": "batch",
            "model.num_params": "2000",
            "training.seed": "1",
        },
        {"best/val_dice_fg_mean": 0.6, "test/dice/LV": 0.7},
    )
    assert changed_params([a, b]) == ["model.name", "model.norm", "model.num_params"]
    columns, rows = comparison_rows([a, b], "best/val_dice_fg_mean", "max", per_class_metrics([a, b]))
    assert columns[-2:] == ["test/dice/LV", "test/dice/RV"]
    assert [r["run"] for r in rows] == ["b", "a"] and rows[1]["test/dice/RV"] == 0.3
    # one network with two widths: its own key is what changed
    c = _run("c", {**a.data.params, "model.channels": "[8, 16]"}, {})
    assert changed_params([a, c]) == ["model.channels"]


@pytest.mark.slow
def test_architecture_sweep_end_to_end(tmp_path: Path, tiny_dataset: Path) -> None:
    """Two networks through the sweep preset: one parent run, two FINISHED children, ranked by segexp-compare."""
    from .conftest import TINY_DATASET_OVERRIDES

    tiny = [
        o
        for o in TINY_DATASET_OVERRIDES
        if not o.startswith(("training.epochs", "model.base_filters", "model.num_layers"))
    ]
    cmd = [
        sys.executable,
        "-m",
        "segexp.cli.train",
        "hparams_search=architectures",
        "model=resunet,attention_unet",
        f"paths.root={tmp_path}",
        *tiny,
        f"dataset.root={tiny_dataset}",
        "training.epochs=1",
        "training.steps_per_epoch=2",
        "training.epoch_images.num=1",
        "tracking.log_model=false",
        "training.verbose=0",
    ]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("segexp").experiment_id])
    (parent,) = [r for r in runs if "sweep_dir" in r.data.tags]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [k.info.status for k in kids] == ["FINISHED", "FINISHED"], [k.data.tags for k in kids]
    assert sorted(k.data.params["model.name"] for k in kids) == ["attention_unet", "resunet"]
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "segexp.cli.compare",
            "--tracking-uri",
            uri,
            "--per-class",
            "--parent",
            parent.info.run_id,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr[-3000:]
    header, _, first, _second = table.stdout.strip().splitlines()[-4:]
    assert "model.name" in header and "model.num_params" in header and "model.filters" not in header
    assert "test/dice/square" in header and "test/dice/disc" in header
    best = max(kids, key=lambda k: k.data.metrics["best/val_dice_fg_mean"])
    assert first.startswith(best.info.run_name)


def test_architecture_optuna_space_covers_every_network_and_validates() -> None:
    """The Optuna space's model choice is every network; each choice of every categorical key validates with
    every network (the keys it searches are the ones every network has)."""
    pytest.importorskip("optuna", minversion="4.5", reason='pip install "optuna>=4.5,<6"')
    from optuna.distributions import CategoricalDistribution

    from segexp.launch.search_space import search_space

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=architecture_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper.study_name == "architecture_optuna" and cfg.hydra.sweeper.direction == "maximize"
    parsed = search_space(OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True), [])
    assert not parsed.fixed
    space = parsed.distributions()
    models = space.pop("model").choices
    assert sorted(OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml").name for m in models) == sorted(networks())
    choices = {
        key: dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
        for key, dist in space.items()
    }
    for model in models:  # every network with the last choice of every key at once
        validate_run_config(
            compose_config(["debug=fast", f"model={model}", *(f"{k}={c[-1]}" for k, c in choices.items())])
        )
    for key, values in choices.items():  # every other choice with the default network
        for value in values[:-1]:
            validate_run_config(compose_config(["debug=fast", f"{key}={value}"]))
