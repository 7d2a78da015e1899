"""The plan's rules: fingerprint (and, for a time budget, the measured step) -> choices.

Each rule is a small pure function returning :class:`Choice` entries that name the
fingerprint figure they read and the rule, with the measurement behind it (ACCURACY.md,
README "Choosing a network"). nnU-Net (Isensee et al. 2021) derives topology, input size
and batch from the data and the GPU memory; on a CPU the scarce resource is time, so
segexp also plans the number of steps for ``training.max_time`` from a step time it
measures on the machine (:mod:`segexp.planning.steptime`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from segexp.planning.fingerprint import DataFingerprint

#: The network of the plan: MONAI's residual U-Net. At equal CPU time it led the model zoo
#: on real MR slices (test foreground Dice 0.216 vs 0.182 for FlexUNet, README "Choosing a network").
NETWORK = "resunet"
#: Widths of MONAI's UNet levels (16...256); the plan keeps a prefix of them.
WIDTHS = (16, 32, 64, 128, 256)
#: Smallest feature map (pixels) at the bottom of the U: nnU-Net stops pooling at 4-8 px.
MIN_BOTTOM = 8
#: Longest input side by device when plan.max_side is auto: 256 keeps a CPU step under a second.
MAX_SIDE = {"cpu": 256, "gpu": 512}
#: Images per step (MONAI's and the measured presets' batch).
BATCH_SIZE = 8
#: Adam's peak rate: 3e-3 beat 1e-3 at equal steps (phantom 0.84 vs 0.69, hvsmr_mini 0.199 vs 0.158).
LEARNING_RATE = 3.0e-3
#: The augmentation preset: ``spatial`` (rotation, shear, shrink, elastic and lens distortion; ``full`` without
#: its mirrors) for any number of training cases. Scans come in the patient's fixed orientation and the labels
#: name sides: a mirrored slice shows the right ventricle where the left one lies, and every flipped run (MONAI's
#: too) labelled hvsmr_mini's left atrium as right ventricle. Seeds 1 2 3 of a 4-minute plan on a Xeon with AMX
#: (ACCURACY.md "Warps without mirrors"): hvsmr_mini (3 training patients) 0.531 against 0.408 without
#: augmentation, 0.318 with flips and 0.232 with ``full``; hocmvalves_mini (1 patient) 0.572 against 0.446 with
#: ``full`` (mirrors) and 0.118 with flips alone.
AUGMENTATION = "spatial"
#: Below this many steps the learning rate stays constant (poly decay starved 160-step runs:
#: hvsmr_mini 0.112 with poly vs 0.158 constant, ACCURACY.md); from here on nnU-Net's poly.
CONSTANT_LR_BELOW = 1000
#: nnU-Net's foreground oversampling; off when every class is in nearly every slice anyway.
FOREGROUND_FRACTION = 0.33
COMMON_CLASS = 0.9
#: Fixed cost of an epoch end beyond the validation batches (s): logging, the best model's copy in
#: memory, and the checkpoint and epoch images of the epochs that have them (below), spread out.
EPOCH_END_S = 0.3
#: With a time budget, a resume checkpoint at least every this many seconds of training: a kill
#: loses at most that much (nnU-Net writes one every 50 epochs). Each write of the ResUNet cost
#: 0.35 s on 2 cores, a quarter of a small epoch's fixed cost.
CHECKPOINT_EVERY_S = 300.0
#: With a time budget, about this many epoch-image sets per run (the MLflow image slider); each
#: set cost 0.44 s (6 images, ResUNet 256x256, 2 cores).
EPOCH_IMAGE_SETS = 10
#: Share of the budget the epochs may overshoot to: training.max_time ends the run (constant rate only).
OVERSHOOT = 1.25
#: Epochs of a run without a time budget.
FIXED_EPOCHS = 10


@dataclass(frozen=True)
class Machine:
    """Where the plan is made: ``device`` cpu | gpu, a name (CPU model or GPU) and the usable cores."""

    device: str
    name: str
    cores: int


@dataclass(frozen=True)
class StepTime:
    """Measured on this machine for the planned network (seconds): the first step (graph tracing and
    compilation included), the median training step, the median validation batch and, with
    ``training.loader.workers: 0``, the training loader's median batch (augmentation in the main
    thread, between two steps; 0 when loader threads prepare batches during the step)."""

    first_s: float
    train_s: float
    infer_s: float
    load_s: float = 0.0

    @property
    def cycle_s(self) -> float:
        """Seconds per training step of the epoch loop: ``train_s + load_s``."""
        return self.train_s + self.load_s


@dataclass(frozen=True)
class Choice:
    """One planned setting: a dotted config key (``group`` true: a config-group choice such as
    ``model=resunet``), its value, the fingerprint figure read and the rule that chose it.
    ``requires``: only applied with that group choice (``model=resunet``)."""

    key: str
    value: Any
    figure: str
    rule: str
    group: bool = False
    requires: str | None = None


def input_size(fp: DataFingerprint, max_side: int) -> tuple[int, int]:
    """(height, width): the median slice scaled down (never up) so its long side is <= ``max_side``,
    each side rounded down to a multiple of ``2**strides`` of the network it gets (at least one step)."""
    h, w = fp.image_size
    scale = min(1.0, max_side / max(h, w))
    multiple = 2 ** strides_for(min(h, w) * scale)
    return max(multiple, int(h * scale) // multiple * multiple), max(multiple, int(w * scale) // multiple * multiple)


def strides_for(side: float) -> int:
    """Halvings of the U: MONAI's 4, fewer while the bottom map would fall under :data:`MIN_BOTTOM` px."""
    return max(1, min(len(WIDTHS) - 1, int(math.floor(math.log2(max(side, 2) / MIN_BOTTOM)))))


def max_side_for(machine: Machine, setting: Any) -> int:
    return MAX_SIDE.get(machine.device, MAX_SIDE["cpu"]) if setting == "auto" else int(setting)


def xla_for(machine: Machine, precision: str) -> bool:
    """XLA for the training step, except bf16 on a CPU (XLA's CPU backend does not reach oneDNN's bf16 kernels).

    Measured with ``scripts/bench.py --only peer``, ResUNet 256x256, batch 8, 2 cores, alternating
    fresh processes. Zen 3 (no AVX-512), fp32: XLA 0.95 s vs 1.17 s per step in real epochs. Zen 4
    (avx512_bf16): XLA fp32 0.576 s, fp32 0.512 s, XLA bf16 0.614 s, bf16 0.472 s. Where the two
    CPUs disagree (fp32) and a budget is planned, the plan times both (:func:`xla_measured`).
    """
    return not (machine.device == "cpu" and precision == "bf16")


def xla_measured(machine: Machine, precision: str) -> bool:
    """Whether a budgeted plan times the step with and without XLA: on a CPU in fp32 (fp16), where the
    faster one depended on the CPU (above); bf16 on a CPU and GPUs keep :func:`xla_for`'s choice."""
    return machine.device == "cpu" and precision != "bf16"


def budget_steps(budget_s: float, step: StepTime) -> float:
    """Training steps that fit into ``budget_s`` seconds: ``(budget_s - first_s) / cycle_s``."""
    return (budget_s - step.first_s) / step.cycle_s


def xla_choice(minutes: float, with_xla: StepTime, without: StepTime, requires: str | None) -> Choice:
    """``training.jit_compile`` from both measured steps: the one that fits more steps into the budget."""
    budget = 60.0 * minutes
    xla = budget_steps(budget, with_xla) >= budget_steps(budget, without)
    figure = (
        f"measured: XLA {with_xla.train_s:.3f} s per step (first {with_xla.first_s:.1f} s), without "
        f"{without.train_s:.3f} s (first {without.first_s:.1f} s)"
    )
    return Choice(
        "training.jit_compile",
        xla,
        figure,
        f"the variant that fits more steps into training.max_time {minutes:g} min: (T - first) / step "
        "(Zen 3: XLA faster, Zen 4: without; README 'Plan')",
        requires=requires,
    )


def network_choices(
    fp: DataFingerprint, machine: Machine, max_side: Any = "auto", precision: str = "fp32"
) -> list[Choice]:
    """Network, depth, input size and channels from the slice size and the device; XLA from the
    device and the compute ``precision`` (``training.precision`` resolved: fp32 | bf16 | fp16)."""
    side = max_side_for(machine, max_side)
    h, w = input_size(fp, side)
    strides = strides_for(min(h, w))
    widths = list(WIDTHS[: strides + 1])
    size = f"median slice {fp.image_size[0]}x{fp.image_size[1]}"
    spacing = f", spacing {fp.spacing_mm[0]:g}x{fp.spacing_mm[1]:g} mm" if fp.spacing_mm else ""
    needs = f"model={NETWORK}"
    return [
        Choice(
            "model",
            NETWORK,
            f"{fp.slices.get('train', 0)} train slices on {machine.device}",
            "MONAI's residual U-Net: at equal CPU time it led the zoo on real slices (README 'Choosing a network')",
            group=True,
        ),
        Choice(
            "model.image_height",
            h,
            size + spacing,
            f"long side scaled to <= {side} px ({machine.device}), a multiple of 2**{strides}; never upsampled",
        ),
        Choice(
            "model.image_width",
            w,
            size + spacing,
            f"long side scaled to <= {side} px ({machine.device}), a multiple of 2**{strides}; never upsampled",
        ),
        Choice(
            "model.image_channels",
            fp.channels,
            {1: "grey", 3: "colour (3 different channels), 3 stacked windows or a slice with its 2 neighbours"}.get(
                fp.channels, f"{fp.channels} stacked channels (windows x (2 context_slices + 1))"
            ),
            "the images' own channels (dataset.json's storage where segexp-prepare stacked windows or neighbouring "
            "slices: dataset.context_slices)",
        ),
        Choice(
            "training.jit_compile",
            xla_for(machine, precision),
            f"{NETWORK} on {machine.device}, {precision} compute",
            "XLA for an fp32 training step (Keras' auto turns it off on CPU-only machines): 0.95 vs 1.17 s per step "
            "in real epochs (Zen 3, hvsmr_mini 256x256, batch 8, 2 cores); none for bf16 on a CPU, where oneDNN's "
            "native bf16 kernels stepped in 0.472 s against 0.614 s with XLA (Zen 4, avx512_bf16; xla_for)",
            requires=needs,
        ),
        Choice(
            "model.channels",
            widths,
            f"input {h}x{w}",
            f"MONAI's 16...256 widths, {strides} halvings: bottom map {min(h, w) // 2**strides} px "
            f"(>= {MIN_BOTTOM}, nnU-Net pools to 4-8 px)",
            requires=needs,
        ),
    ]


def loader_choices(fp: DataFingerprint, machine: Machine, size: tuple[int, int], cache_mb: float) -> list[Choice]:
    """CPU: no loader threads when the loader cache holds the whole train split at the input ``size``.

    The cached slices cost only their augmentation, and on a CPU every loader thread takes cores
    from the training step. Measured in real ``segexp-train`` epochs (hvsmr_mini, ResUNet 256x256,
    augmentation=full, 2 cores): 0.95 s per step with 2 loader threads, 0.83 s with none
    (validation 0.41 -> 0.28 s). Data larger than the cache keeps the threads that hide disk reads.
    """
    train = fp.slices.get("train", 0)
    mib = train * size[0] * size[1] * (fp.channels + 1) / 2**20  # uint8 image + uint8 class mask per slice
    if machine.device != "cpu" or mib > cache_mb:
        return []
    return [
        Choice(
            "training.loader.workers",
            0,
            f"{train} train slices at {size[0]}x{size[1]} = {mib:.0f} MiB "
            f"<= loader cache {cache_mb:g} MiB, on {machine.device}",
            "cached slices are read in the main thread: loader threads took cores from the step "
            "(hvsmr_mini, 2 cores: 0.95 -> 0.83 s per step)",
        )
    ]


def data_choices(fp: DataFingerprint) -> list[Choice]:
    """Batch, learning rate, augmentation (the same for any data: :data:`AUGMENTATION`) and foreground
    oversampling from the classes' per-slice presence."""
    cases = fp.cases.get("train", 0)
    foreground = {n: fp.slice_presence.get(n, 0.0) for n in fp.class_names[1:]}
    rarest = min(foreground, key=lambda n: foreground[n]) if foreground else None
    common = bool(foreground) and min(foreground.values()) >= COMMON_CLASS
    presence = f"rarest class {rarest} in {100 * foreground[rarest]:.0f} % of train slices" if rarest else "no classes"
    return [
        Choice(
            "training.batch_size",
            BATCH_SIZE,
            f"{fp.slices.get('train', 0)} train slices",
            "8 images per step, MONAI's batch and the measured CPU presets'",
        ),
        Choice(
            "training.learning_rate",
            LEARNING_RATE,
            "Adam",
            "3e-3 beat 1e-3 at equal steps (phantom 0.84 vs 0.69, hvsmr_mini 0.199 vs 0.158; ACCURACY.md)",
        ),
        Choice(
            "augmentation",
            AUGMENTATION,
            f"{cases} train case{'' if cases == 1 else 's'}",
            "rotation, shear, shrink, elastic, no mirrors (they swap left and right anatomy): hvsmr_mini "
            "0.531 vs 0.408 without augmentation, hocmvalves_mini 0.572 vs 0.446 with mirrors; "
            "ACCURACY.md 'Warps without mirrors'",
            group=True,
        ),
        Choice(
            "training.foreground_fraction",
            0.0 if common else FOREGROUND_FRACTION,
            presence,
            f"nnU-Net's 1/3 foreground oversampling; 0 when every class is in >= {100 * COMMON_CLASS:.0f} % "
            "of the slices anyway",
        ),
    ]


def validation_cost(valid_slices: int, batch_size: int, step: StepTime) -> float:
    """Seconds of one epoch end: ``ceil(valid / batch)`` validation batches + :data:`EPOCH_END_S`."""
    return math.ceil(max(1, valid_slices) / batch_size) * step.infer_s + EPOCH_END_S


def budget_choices(
    minutes: float | None,
    step: StepTime | None,
    valid_slices: int,
    batch_size: int,
    fixed_steps: int,
    validations: int,
    max_overhead: float,
) -> list[Choice]:
    """Steps per epoch, epochs and schedule: filling ``minutes`` with measured steps, else ``fixed_steps``.

    With a budget ``T`` (s) and a measured step: ``K = clip(floor(max_overhead * T / v), 3, validations)``
    validations of cost ``v`` (:func:`validation_cost`), ``N = (T - first - K v) / (train_s + load_s)`` steps,
    ``steps_per_epoch = ceil(N / K)``; with a constant rate the epochs overshoot by :data:`OVERSHOOT`
    and ``training.max_time`` ends the run, so a faster machine still uses the whole budget. With a
    budget the resume checkpoint comes every ``floor(CHECKPOINT_EVERY_S / epoch_s)`` epochs and the
    epoch images every ``ceil(epochs / EPOCH_IMAGE_SETS)``.
    """
    if minutes is None or step is None:
        total, epochs = fixed_steps, min(FIXED_EPOCHS, validations)
        figure, how = "no training.max_time", f"plan.fixed_steps {fixed_steps} in {epochs} epochs"
    else:
        budget = 60.0 * minutes
        v = validation_cost(valid_slices, batch_size, step)
        epochs = int(min(validations, max(3, math.floor(max_overhead * budget / v))))
        total = max(epochs, int((budget - step.first_s - epochs * v) / step.cycle_s))
        loading = f" + loader {step.load_s:.3f} s" if step.load_s else ""
        figure = (
            f"training.max_time {minutes:g} min, step {step.train_s:.3f} s{loading}, first step {step.first_s:.1f} s, "
            f"epoch end {v:.2f} s ({valid_slices} valid slices)"
        )
        how = (
            f"{total} steps fill the budget with {epochs} validations taking <= {100 * max_overhead:.0f} % "
            f"(plan.max_overhead)"
        )
    per_epoch = max(1, math.ceil(total / epochs))
    constant = total < CONSTANT_LR_BELOW
    if constant and minutes is not None and step is not None:
        epochs = math.ceil(epochs * OVERSHOOT)
        how += f"; {OVERSHOOT:g}x the epochs, training.max_time ends the run"
    choices = [
        Choice("training.steps_per_epoch", per_epoch, figure, how),
        Choice("training.epochs", epochs, figure, how),
        Choice("training.validation.every_n_epochs", 1, f"{epochs} epochs", "validate after every (planned) epoch"),
    ]
    if minutes is not None and step is not None:
        epoch_s = per_epoch * step.cycle_s + validation_cost(valid_slices, batch_size, step)
        checkpoint = max(1, min(epochs, math.floor(CHECKPOINT_EVERY_S / epoch_s)))
        images = max(1, math.ceil(epochs / EPOCH_IMAGE_SETS))
        choices += [
            Choice(
                "training.checkpoint.every_n_epochs",
                checkpoint,
                f"epochs of ~{epoch_s:.0f} s",
                f"a resume checkpoint at least every {CHECKPOINT_EVERY_S / 60:g} min of training (and at the end); "
                "each write cost 0.35 s (ResUNet, 2 cores)",
            ),
            Choice(
                "training.epoch_images.every_n_epochs",
                images,
                f"{epochs} epochs",
                f"about {EPOCH_IMAGE_SETS} epoch-image sets per run; each cost 0.44 s (6 images, ResUNet 256x256)",
            ),
        ]
    if constant:  # else the default: nnU-Net's poly decay over epochs x steps_per_epoch
        choices.append(
            Choice(
                "training.schedule",
                None,
                f"{total} steps",
                f"constant rate below {CONSTANT_LR_BELOW} steps (poly decay starved 160-step runs: "
                "hvsmr_mini 0.112 vs 0.158 constant; ACCURACY.md); nnU-Net's poly decay from there",
            )
        )
    return choices
