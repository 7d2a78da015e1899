"""The plan: each rule on synthetic fingerprints, what the user set wins, the preset, segexp-train's plan step."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from segexp.config.schema import CONF_DIR
from segexp.planning import rules
from segexp.planning.fingerprint import DataFingerprint, median_size
from segexp.planning.plan import Explicit, _nested_yaml, explicit_settings
from segexp.planning.rules import Choice, Machine, StepTime

CPU = Machine("cpu", "test CPU", 2)
GPU = Machine("gpu", "test GPU", 16)


def fingerprint(size=(512, 512), train_cases=5, presence=None, channels=1, valid_slices=12) -> DataFingerprint:
    presence = presence or {"LV": 0.5, "AV": 0.05}
    names = ("background", *presence)
    return DataFingerprint(
        name="synthetic",
        image_size=size,
        channels=channels,
        spacing_mm=None,
        intensity_mean=80.0,
        intensity_std=60.0,
        cases={"train": train_cases, "valid": 2, "test": 0},
        slices={"train": 10 * train_cases, "valid": valid_slices, "test": 0},
        class_names=names,
        class_frequency={n: 0.1 for n in names},
        slice_presence={"background": 1.0, **presence},
    )


def by_key(choices: list[Choice]) -> dict[str, object]:
    return {c.key: c.value for c in choices}


def test_input_size_is_scaled_down_to_the_device_cap_never_up() -> None:
    assert rules.input_size(fingerprint((512, 512)), 256) == (256, 256)
    assert rules.input_size(fingerprint((512, 512)), 512) == (512, 512)
    assert rules.input_size(fingerprint((128, 128)), 256) == (128, 128)  # never upsampled
    h, w = rules.input_size(fingerprint((300, 500)), 256)  # aspect kept, multiples of 2**strides
    assert w == 256 and h == 144 and h % 16 == 0


def test_depth_keeps_the_bottom_map_at_least_8_px() -> None:
    assert rules.strides_for(256) == 4 and rules.strides_for(128) == 4  # MONAI's 4 halvings
    assert rules.strides_for(64) == 3 and rules.strides_for(32) == 2
    choices = by_key(rules.network_choices(fingerprint((64, 64)), CPU))
    assert choices["model.channels"] == [16, 32, 64, 128]
    assert choices["model"] == "resunet" and choices["training.jit_compile"] is True


def test_xla_for_fp32_and_on_gpus_not_for_bf16_on_a_cpu() -> None:
    """oneDNN's native bf16 kernels beat XLA's CPU backend (Zen 4: 0.453 vs 0.650 s per step)."""
    jit = lambda machine, precision: by_key(rules.network_choices(fingerprint(), machine, "auto", precision))[  # noqa: E731
        "training.jit_compile"
    ]
    assert jit(CPU, "fp32") is True and jit(CPU, "bf16") is False
    assert jit(GPU, "bf16") is True and jit(GPU, "fp16") is True


def test_measured_xla_choice_fits_the_most_steps_into_the_budget() -> None:
    zen4 = rules.xla_choice(4, StepTime(12.0, 0.576, 0.1), StepTime(5.9, 0.512, 0.1), "model=resunet")
    zen3 = rules.xla_choice(4, StepTime(16.0, 0.95, 0.1), StepTime(6.0, 1.17, 0.1), "model=resunet")
    assert zen4.value is False and zen3.value is True and zen4.figure.startswith("measured: XLA 0.576 s")
    short = rules.xla_choice(0.5, StepTime(20.0, 0.5, 0.1), StepTime(5.0, 0.6, 0.1), "model=resunet")
    assert short.value is False  # (30 - 20) / 0.5 = 20 steps against (30 - 5) / 0.6 = 41
    assert (
        rules.xla_measured(CPU, "fp32") and not rules.xla_measured(CPU, "bf16") and not rules.xla_measured(GPU, "fp32")
    )


def test_cpu_name_tells_generations_apart(tmp_path) -> None:
    from segexp.planning.steptime import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
        "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    )
    assert cpu_name(info) == "AMD EPYC (cpu family 25, model 17)"


def test_max_side_follows_the_device_or_the_setting() -> None:
    assert by_key(rules.network_choices(fingerprint(), CPU))["model.image_height"] == 256
    assert by_key(rules.network_choices(fingerprint(), GPU))["model.image_height"] == 512
    assert by_key(rules.network_choices(fingerprint(), GPU, 128))["model.image_height"] == 128


def test_channels_follow_the_images() -> None:
    assert by_key(rules.network_choices(fingerprint(channels=3), CPU))["model.image_channels"] == 3


def test_every_case_count_gets_the_spatial_augmentation_without_mirrors() -> None:
    for cases in (1, 2, 3, 40):
        assert by_key(rules.data_choices(fingerprint(train_cases=cases)))["augmentation"] == "spatial"


def test_foreground_oversampling_unless_every_class_is_everywhere() -> None:
    assert by_key(rules.data_choices(fingerprint()))["training.foreground_fraction"] == pytest.approx(0.33)
    common = fingerprint(presence={"LV": 0.95, "RV": 0.99})
    assert by_key(rules.data_choices(common))["training.foreground_fraction"] == 0.0


def test_cpu_reads_cached_slices_in_the_main_thread() -> None:
    fp = fingerprint()  # train slices of 5 cases
    train = fp.slices["train"]
    assert by_key(rules.loader_choices(fp, CPU, (256, 256), 1024)) == {"training.loader.workers": 0}
    assert rules.loader_choices(fp, GPU, (256, 256), 1024) == []  # the GPU computes: threads feed it
    needed = train * 256 * 256 * 2 / 2**20
    assert rules.loader_choices(fp, CPU, (256, 256), needed * 0.99) == []  # not cached: threads hide the reads
    assert by_key(rules.loader_choices(fp, CPU, (256, 256), needed)) == {"training.loader.workers": 0}


def test_budget_fills_max_time_with_measured_steps() -> None:
    step = StepTime(first_s=20.0, train_s=0.5, infer_s=0.2)
    choices = by_key(
        rules.budget_choices(
            4.0, step, valid_slices=12, batch_size=8, fixed_steps=1000, validations=20, max_overhead=0.1
        )
    )
    v = rules.validation_cost(12, 8, step)  # 2 batches x 0.2 s + 0.3 s
    assert v == pytest.approx(0.7)
    k = min(20, int(0.1 * 240 / v))  # 17 validations
    total = int((240 - 20 - k * v) / 0.5)
    assert choices["training.steps_per_epoch"] == -(-total // k)
    assert choices["training.epochs"] == -(-k * 5 // 4)  # 1.25x: max_time ends the run
    assert choices["training.schedule"] is None  # short run: constant rate
    epoch_s = choices["training.steps_per_epoch"] * 0.5 + v
    assert choices["training.checkpoint.every_n_epochs"] == min(choices["training.epochs"], int(300 // epoch_s))
    assert choices["training.epoch_images.every_n_epochs"] == -(-choices["training.epochs"] // 10)


def test_a_main_thread_loader_batch_counts_into_the_step() -> None:
    bare, loaded = StepTime(20.0, 0.5, 0.2), StepTime(20.0, 0.5, 0.2, load_s=0.1)

    def plan(step: StepTime) -> dict:
        return by_key(
            rules.budget_choices(
                4.0, step, valid_slices=12, batch_size=8, fixed_steps=1000, validations=20, max_overhead=0.1
            )
        )

    k = min(20, int(0.1 * 240 / 0.7))
    assert plan(loaded)["training.steps_per_epoch"] == -(-int((240 - 20 - k * 0.7) / 0.6) // k)
    assert plan(loaded)["training.steps_per_epoch"] < plan(bare)["training.steps_per_epoch"]


def test_long_budgets_checkpoint_every_few_minutes() -> None:
    step = StepTime(first_s=20.0, train_s=0.5, infer_s=0.2)
    choices = by_key(rules.budget_choices(30.0, step, 12, 8, 1000, 20, 0.1))
    epoch_s = choices["training.steps_per_epoch"] * 0.5 + rules.validation_cost(12, 8, step)
    n = choices["training.checkpoint.every_n_epochs"]
    assert n > 1 and n * epoch_s <= 300 < (n + 1) * epoch_s
    hours = by_key(rules.budget_choices(240.0, step, 12, 8, 1000, 20, 0.1))
    assert hours["training.checkpoint.every_n_epochs"] == 1  # 12-minute epochs: every one


def test_without_budget_fixed_steps_and_poly_from_1000() -> None:
    choices = by_key(rules.budget_choices(None, None, 12, 8, fixed_steps=1000, validations=20, max_overhead=0.1))
    assert choices["training.epochs"] * choices["training.steps_per_epoch"] == 1000
    assert "training.schedule" not in choices  # the default poly decay
    short = by_key(rules.budget_choices(None, None, 12, 8, fixed_steps=200, validations=20, max_overhead=0.1))
    assert short["training.schedule"] is None


def test_a_slower_machine_plans_fewer_steps() -> None:
    fast = by_key(rules.budget_choices(4.0, StepTime(10, 0.3, 0.1), 12, 8, 1000, 20, 0.1))
    slow = by_key(rules.budget_choices(4.0, StepTime(10, 0.9, 0.3), 12, 8, 1000, 20, 0.1))
    assert (
        fast["training.steps_per_epoch"] * fast["training.epochs"]
        > slow["training.steps_per_epoch"] * slow["training.epochs"]
    )


def test_median_size() -> None:
    assert median_size({"512x256": 3, "100x100": 1}) == (256, 512)


def test_user_keys_and_presets_win() -> None:
    found = explicit_settings(
        [
            "model=flexunet",
            "training.epochs=3",
            "+dataset.cases.train=[a]",
            "experiment=hocmvalves",
            "hydra.run.dir=/tmp/x",
        ]
    )
    assert {"model", "dataset", "augmentation", "experiment"} <= found.groups
    assert {"training.epochs", "training.batch_size", "training.learning_rate", "dataset.cases.train"} <= found.keys
    thin = explicit_settings(["experiment=hvsmr_mini"])  # the thin preset leaves the recipe to the plan
    assert thin.groups == {"dataset", "experiment"} and thin.keys == {"plan.fixed_steps"}
    assert not any(k.startswith("hydra") for k in found.keys)
    explicit = Explicit(keys={"training.schedule.power"}, groups={"model"})
    assert explicit.covers(Choice("training.schedule", None, "", ""))  # a child of the key was set
    assert explicit.covers(Choice("model", "resunet", "", "", group=True))
    assert not explicit.covers(Choice("model.image_height", 256, "", ""))  # a model preset is not a size


def test_preset_yaml_nests_keys_and_parses() -> None:
    text = "\n".join(
        _nested_yaml(
            [
                ("training.epochs", 3, "rule a"),
                ("model.channels", [16, 32], "rule b"),
                ("training.schedule", None, "rule c"),
                ("model.image_height", 64, "d"),
            ]
        )
    )
    assert yaml.safe_load(text) == {
        "model": {"channels": [16, 32], "image_height": 64},
        "training": {"epochs": 3, "schedule": None},
    }


def test_plan_step_of_a_run_writes_plan_and_the_trained_config(tmp_path, tiny_dataset) -> None:
    """segexp-train's plan step on a folder given by its path alone (class table from the masks):
    plan.json, the preset, .hydra/config.yaml = what trains; the user's steps and epochs win."""
    from segexp.planning.apply import planned_run_config

    overrides = [
        "dataset=folder",
        f"dataset.root={tiny_dataset}",
        "training.epochs=2",
        "training.steps_per_epoch=2",
        "training.loader.workers=0",
        "tracking=none",
        f"paths.output_dir={tmp_path / 'out'}",
    ]
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
        (run_dir / ".hydra" / "config.yaml").write_text("composed: true\n")
        planned, params = planned_run_config(cfg, overrides, run_dir)
    assert planned.model.name == "resunet" and planned.augmentation.name == "spatial"
    assert list(planned.dataset.class_names) == ["background", "class_1", "class_2"]
    assert planned.training.epochs == 2 and planned.model.image_height == 32
    assert params["plan.model"] == "resunet"
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["fingerprint"]["name"] == planned.dataset.name
    preset = yaml.safe_load((run_dir / "plan.yaml").read_text())
    assert {"override /plan": "none"} in preset["defaults"]
    assert (run_dir / ".hydra" / "composed.yaml").read_text() == "composed: true\n"
    assert "resunet" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_a_budgeted_fp32_plan_on_a_cpu_times_both_xla_variants(tmp_path, tiny_dataset) -> None:
    """Both steps measured and cached; the jit choice names both; the run takes the chosen model over."""
    from segexp.planning.plan import make_plan
    from segexp.training import warm

    overrides = [
        "dataset=folder",
        f"dataset.root={tiny_dataset}",
        "training.max_time=1",
        "training.precision=fp32",
        "training.loader.workers=0",
        "tracking=none",
        "plan.measure_steps=1",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
        planned, plan = make_plan(cfg, overrides)
    jit = next(c for c in plan.applied if c.key == "training.jit_compile")
    assert jit.figure.startswith("measured: XLA") and planned.training.jit_compile is jit.value
    assert len(list((tmp_path / "cache" / "step_time").glob("*.json"))) == 2
    assert set(warm._kept) and len(warm._kept) == 2  # both timed models wait for the run
    assert plan.step.load_s > 0 and planned.training.loader.workers == 0  # the main thread's batches count
    warm.release()


def test_bad_plan_values_are_refused_by_key(compose_train) -> None:
    from segexp.config.schema import check_train_config

    cfg = compose_train("plan.max_side=8", "plan.max_overhead=1.5", "plan.fixed_steps=0")
    _, problems = check_train_config(cfg)
    assert any(p.startswith("plan.max_side:") for p in problems)
    assert any(p.startswith("plan.max_overhead:") for p in problems)
    assert any(p.startswith("plan.fixed_steps:") for p in problems)
