"""What a run is made of: the data, optimisation and run settings, the two recipes, and the rules that turn a
command line's options into configs (a resume's overrides, the warmup cap, the paper-lr notice), so a Python
caller of `train()` gets what `alexnet train` gets.

Recipes (`recipe()`):
    paper   §5: batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 whenever the validation
            error stops improving, 90 epochs, N(0, 0.01) init with the paper's unit biases; §2/§4.1: random 227
            crops and ten-crop corners inside the central 256x256 patch, minus the mean image (per pixel), PCA
            lighting.
    modern  batch 512 with the lr scaled linearly (0.01 per 128 images, Goyal et al. 2017 §2.1), 5 warmup
            epochs (ibid. §2.2), cosine decay to 0 (Loshchilov & Hutter 2017), label smoothing 0.1 (Szegedy et
            al. 2016 §7), Kaiming init (He et al. 2015) on inputs divided by the per-channel std, no PCA lighting
            noise. Not the paper; it starts learning at once where the paper's init can sit at chance for epochs.
Either recipe takes augment="inception" (`with_augment`): torchvision's RandomResizedCrop at AlexNet's 227 input
instead of the paper's crops; `--recipe modern --augment inception` is then torchvision's AlexNet recipe of crops.

Every bad value raises ConfigError (a ValueError too) with one line naming it and what is allowed.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from alexdata import host
from alexdata.errors import ConfigError, TrainError, plural
from alexmodel import runlog
from pipelines.config import AUGMENTS, AugmentConfig, Tuning
from pipelines.config import DEVICES as PIPELINE_DEVICES

if TYPE_CHECKING:  # model.py imports torch, which this module leaves to its callers (cli.py reads the fields)
    from alexmodel.model import ModelConfig

RECIPES = ("paper", "modern")
SCHEDULES = ("plateau", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
PLACEMENTS = ("single", "two-tower")
DEVICES = ("auto", *PIPELINE_DEVICES)  # "gpu": CUDA device `index`
PAPER_LR_BATCH = 128  # the paper's lr 0.01 is for 128 images per step (§5)
FEW_STEPS = 10  # optimizer steps per epoch under which the recipe's batch is too big for the data (README: Small data)


def _opt(default, text: str, **more):
    """A config field whose metadata carries its command-line option: the help text, and where the default does
    not say it, the choices, the type or the least value; cli.py `config_options` makes the click option."""
    return field(default=default, metadata={"help": text, **more})


@dataclass(frozen=True)
class DataConfig:
    """What a run reads. threads, echo and verify are options of `alexnet train`, made from their metadata here;
    the DALI knobs are Tuning's (pipelines/config.py)."""

    data: str  # a prepare output (or class-folder tree) with a train and a val split
    stats: str | None = None  # stats.json (0-255 scale); None: DATA/stats.json from `alexnet stats DATA`
    threads: int | None = _opt(
        None, "DALI threads per rank [default: this process's cores divided among the node's ranks].", type=int, min=1
    )
    aug: AugmentConfig = AugmentConfig()  # paper §4.1 (pipelines/config.py)
    tuning: Tuning = Tuning()  # DALI's speed knobs (pipelines/config.py): prefetch, the GPU decoder's, its cache
    # Data echoing (Choi et al. 2019, arXiv:1907.05550; alexdata/echo.py). Not speed only: each step sees fewer
    # fresh images (README, "Data echoing").
    echo: int = _opt(
        1,
        "Data echoing: N differently augmented copies of each decoded image, in different batches; an epoch then "
        "has N x the steps (1: none).",
        min=1,
    )
    # alexdata/verify.py `verify_once`
    verify: bool = _opt(
        True,
        "sha256 of every shard against manifest.json on a prepare output's first use (all cores; ImageNet's ~50 GB: "
        "about a minute), remembered until its files change; --skip-verify checks sizes and indexes only.",
        off="skip-verify",
    )

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}: expected an int >= 1 (or None for all cores)")
        if not (isinstance(self.echo, int) and self.echo >= 1):
            raise ConfigError(f"echo={self.echo!r}: expected an int >= 1 (augmented copies of each decoded image)")
        if not isinstance(self.tuning, Tuning):
            raise ConfigError(f"tuning={self.tuning!r}: expected a pipelines.config.Tuning")


@dataclass(frozen=True)
class OptimConfig:
    """How a run learns: the paper's §5 by default, every field an option of `alexnet train` made from its
    metadata here. A field's default is the paper recipe's; `shown` says the recipes' defaults where they differ
    (recipe())."""

    recipe: str = _opt(
        "paper",
        "paper: §5 as published. modern: batch 512, linear lr scaling, warmup, cosine, label smoothing, Kaiming init.",
        choices=RECIPES,
    )
    batch_size: int = _opt(
        128,
        "The GLOBAL batch: images per step over all ranks together (each of N ranks takes 1/N).",
        min=1,
        shown="paper 128; modern 512",
    )
    epochs: int = _opt(90, 'Paper §5: "roughly 90 cycles through the training set".', min=1)
    lr: float = _opt(
        0.01,
        "Initial/peak learning rate. On --resume: a new initial lr, the plateau cuts made so far kept.",
        shown="paper 0.01 at any batch size; modern 0.01 per 128 images of the batch",
    )
    momentum: float = _opt(0.9, "SGD momentum (§5).", min=0, max=1, max_open=True)
    weight_decay: float = _opt(5e-4, "On every weight and bias, as in the paper's update rule (§5).", min=0)
    schedule: str = _opt(
        "plateau",
        'plateau: the lr divided by --plateau-factor "when the validation error rate stopped improving" (§5); '
        "cosine: warmup, then cosine decay to 0.",
        choices=SCHEDULES,
        shown="paper plateau; modern cosine",
    )
    plateau_factor: float = _opt(
        0.1, 'The plateau cut: §5\'s "divided by 10".', min=0, min_open=True, max=1, max_open=True
    )
    plateau_patience: int = _opt(
        5, "Epochs without a better val top-1 before a cut; the paper gives no number (3 cuts in ~90 epochs).", min=0
    )
    warmup_epochs: float = _opt(
        0.0,
        "Linear lr warmup from 0, cosine schedule only (Goyal et al. 2017 §2.2); at most half the run.",
        min=0,
        shown="paper 0; modern 5",
    )
    label_smoothing: float = _opt(
        0.0, "Szegedy et al. 2016 §7; the paper uses none.", min=0, max=1, max_open=True, shown="paper 0; modern 0.1"
    )

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe={self.recipe!r}: expected one of {', '.join(RECIPES)}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size={self.batch_size!r}: expected an int >= 1")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"epochs={self.epochs!r}: expected an int >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr!r}: expected a finite number > 0")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ConfigError(
                f"momentum={self.momentum}, weight_decay={self.weight_decay}: expected 0 <= momentum "
                f"< 1 and weight_decay >= 0"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0 < self.plateau_factor < 1 or self.plateau_patience < 0:
            raise ConfigError(
                f"plateau_factor={self.plateau_factor}, plateau_patience={self.plateau_patience}: "
                f"expected 0 < factor < 1 and patience >= 0"
            )
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.schedule != "cosine"):
            raise ConfigError(f"warmup_epochs={self.warmup_epochs}: expected >= 0, and 0 unless schedule='cosine'")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: expected a number in [0, 1)")


@dataclass(frozen=True)
class RunConfig:
    """How a run runs. Every field but `out` is an option of `alexnet train`, made from its metadata here."""

    out: str = "runs/alexnet"  # run directory: config.json, metrics.jsonl, plot.png, checkpoint.pt
    device: str = _opt("auto", "auto: gpu when torch sees CUDA, else cpu.", choices=DEVICES)
    precision: str = _opt(
        "fp32", "The paper trained in fp32; bf16 autocast; fp16 autocast + GradScaler (GPU only).", choices=PRECISIONS
    )
    channels_last: bool = _opt(False, "NHWC activations (faster convolutions on tensor cores).")
    compile: bool = _opt(False, "torch.compile the model.")
    placement: str = _opt("single", "two-tower: the paper's split of the net over two GPUs (§3.2).", choices=PLACEMENTS)
    checkpoint_every: int = _opt(0, "Also checkpoint every N optimizer steps (0: at epoch ends only).", min=0)
    seed: int = _opt(0, "Init, dropout and the loader's augmentation draws.", min=0)
    torch_threads: int | None = _opt(
        None,
        "CPU compute threads (fix them for bit-exact CPU runs and resumes) [default: torch's, at most this "
        "process's cores divided among the node's ranks].",
        type=int,
        min=1,
    )
    progress: bool = _opt(
        True,
        "A live bar on a terminal, a plain line per logging window otherwise (Slurm, nohup). --no-progress keeps "
        "only the epoch lines.",
    )
    log_every: int = _opt(
        100,
        "Optimizer steps per logging window: a line in OUT/steps.jsonl, the NaN check, the one wait for the GPU "
        "(~1 s on a GPU).",
        min=1,
    )
    tensorboard: bool = _opt(
        False,
        "Also write TensorBoard scalars to OUT/tensorboard (pip install tensorboard, or the [tensorboard] extra).",
    )
    validate: bool = _opt(
        True,
        "Evaluate on DATA's val split after every epoch. --no-val: data without one, train metrics only (needs "
        "--recipe modern: the paper recipe's lr cuts watch the val error).",
        option="val",
    )
    # Speed only, set by `alexnet check` on a GPU (its train stage measures both; docs/BENCHMARKS.md, "The GPU run").
    tf32: bool = _opt(
        True, "fp32 matmuls (the fully connected layers) in TF32 on the GPU; convolutions use TF32 either way."
    )
    fused_sgd: bool = _opt(False, "SGD's update of all parameters in one kernel (fused=True).")

    def __post_init__(self):
        for name, value, allowed in (
            ("device", self.device, DEVICES),
            ("precision", self.precision, PRECISIONS),
            ("placement", self.placement, PLACEMENTS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every}: expected >= 0 steps (0: epoch ends only)")
        if self.log_every < 1:
            raise ConfigError(f"log_every={self.log_every}: expected >= 1 optimizer steps")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"seed={self.seed!r}: expected an int >= 0")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads={self.torch_threads}: expected >= 1 (or None for torch's default)")


# What must match for a checkpoint to resume: everything but the number of epochs (which may grow), the lr (which
# may be lowered by hand, as the paper's authors did, §5; the resume is then no longer exact), the paths, the
# speed-only settings (precision, threads, data.tuning, channels_last, compile, tf32, fused_sgd), the
# number of ranks (a cluster gives what it has: the global batch stays, the per-rank batch changes) and the
# statistics (a resume uses the checkpoint's unless --stats is given, so re-running `alexnet stats` cannot break
# it). The class list must match: a checkpoint never continues on, or scores, data whose labels mean other classes.
COMPAT_KEYS = [
    "classes",
    "model.num_classes",
    "model.width",
    "model.init",
    "data.aug",
    "data.echo",
    "run.seed",
    "run.device",
    "run.placement",
] + [f"optim.{f.name}" for f in fields(OptimConfig) if f.name not in ("epochs", "lr")]


def model_config(**kw) -> ModelConfig:
    """ModelConfig(**kw), a bad value raised as ConfigError (model.py imports only torch, so it raises ValueError)."""
    from alexmodel.model import ModelConfig

    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def recipe(
    name: str = "paper",
    *,
    width: float = 1.0,
    batch_size: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    augment: str = "paper",
) -> tuple[ModelConfig, AugmentConfig, OptimConfig]:
    """The model, augmentation and optimisation settings of a recipe (see the module docstring), with overrides.

    "modern" scales its lr linearly with the batch size unless `lr` is given, and divides the inputs by the
    per-channel std so that Kaiming-initialised layers start at unit scale (the paper's N(0, 0.01) init is
    matched to mean-subtracted 0-255 pixels instead). "paper" keeps lr 0.01 at any batch size.
    ModelConfig.num_classes is a placeholder: train() takes the class count from the data."""
    if name == "paper":
        # §2: crops (and the ten-crop corners) come from the central 256x256 patch, minus the mean image's window
        model, optim = model_config(width=width, init="paper"), OptimConfig()
        aug = AugmentConfig(central_square=True, mean="pixel")
    elif name == "modern":
        # No PCA lighting noise: torchvision's and timm's ImageNet recipes use none.
        model, aug = model_config(width=width, init="modern"), AugmentConfig(divide_std=True, pca_std=0.0)
        optim = OptimConfig(recipe="modern", batch_size=512, schedule="cosine", warmup_epochs=5.0, label_smoothing=0.1)
    else:
        raise ConfigError(f"recipe={name!r}: expected one of {', '.join(RECIPES)}")
    bs = optim.batch_size if batch_size is None else batch_size
    if lr is None:
        lr = optim.lr * bs / PAPER_LR_BATCH if name == "modern" else optim.lr
    aug = with_augment(aug, augment)
    return model, aug, replace(optim, batch_size=bs, epochs=optim.epochs if epochs is None else epochs, lr=lr)


def with_augment(aug: AugmentConfig, augment: str) -> AugmentConfig:
    """`aug` with the training crops `augment`: "paper" (§4.1, as the recipe sets them) or "inception"
    (torchvision's RandomResizedCrop, pipelines/inception.py) at AlexNet's 227 input: the layer arithmetic needs
    227 (model.py), where torchvision's AlexNet pools adaptively and trains at 224. Inception's windows range over
    the whole image, so it drops the paper's central 256x256 patch and mean image (§2) for one mean per channel;
    its evaluation resizes the shorter side to round(227 / 0.875) = 259, then takes the centre 227."""
    if augment not in AUGMENTS:
        raise ConfigError(f"augment={augment!r}: expected one of {', '.join(AUGMENTS)}")
    if augment == aug.augment:
        return aug
    if augment == "inception":
        return replace(aug, augment=augment, central_square=False, mean="channel")
    return replace(aug, augment=augment)


def resolve_device(device: str) -> str:
    """ "auto" -> host.default_device(); "gpu" only where torch sees one (TrainError otherwise)."""
    if device == "auto":
        return host.default_device()
    if device == "gpu" and not host.has_gpu():
        raise TrainError("--device gpu asked for, but torch sees no CUDA GPU (use --device cpu)")
    if device not in PIPELINE_DEVICES:
        raise ConfigError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
    return device


def refuse_on_cpu(device: str, *, precision: str = "fp32", placement: str = "single") -> None:
    """TrainError for what a resolved device "cpu" cannot do: fp16 (its GradScaler is CUDA's) and the two-tower
    placement (two GPUs)."""
    if precision == "fp16" and device != "gpu":
        raise TrainError("--precision fp16 needs a GPU (its GradScaler is CUDA's); use bf16 or fp32 on the CPU")
    if placement == "two-tower" and device != "gpu":
        raise TrainError("--placement two-tower needs two GPUs; use --placement single on the CPU")


def configs_from_dict(cfg: dict) -> tuple[DataConfig, ModelConfig, OptimConfig, RunConfig]:
    """The configs recorded in a run's config.json (to resume with the options the run started with)."""
    d = dict(cfg["data"])
    if not isinstance(d.get("tuning"), dict):  # a run of a version that kept the DALI knobs flat in data
        raise ConfigError(
            "config.data.tuning is missing: a run of an older version of this project; resume it with that "
            "version (its config.json's revision), or train anew"
        )
    d["aug"], d["tuning"] = AugmentConfig(**d["aug"]), tuning(d["tuning"])
    return (DataConfig(**d), model_config(**cfg["model"]), OptimConfig(**cfg["optim"]), RunConfig(**cfg["run"]))


def tuning(record: dict) -> Tuning:
    """Tuning(**record) (a config.json's or a config file's data.tuning), ConfigError with one line for a field
    it has not or a value out of range."""
    unknown = sorted(set(record) - {f.name for f in fields(Tuning)})
    if unknown:
        raise ConfigError(f"data.tuning.{unknown[0]} is no field of Tuning (pipelines/config.py)")
    try:
        return Tuning(**record)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.tuning: {str(e).splitlines()[0]}") from None


# The options a command line may give, by the config whose field each names (`width`: the model's; the DALI
# knobs: data.tuning's).
_OPTIONS = {
    "data": {f.name for f in fields(DataConfig)} - {"data", "aug", "tuning"},
    "tuning": {f.name for f in fields(Tuning)},
    "model": {"width"},
    "aug": {"augment"},
    "optim": {f.name for f in fields(OptimConfig)},
    "run": {f.name for f in fields(RunConfig)} - {"out"},
}


def _on_top(configs: tuple, data: str, out: str, given: dict, *, stats) -> tuple:
    """`configs` (a run's, or a file's) for DATA and OUT with the options `given` on top, and `stats` unless
    given."""
    data_cfg, model, optim, run = configs
    # another augment than the run's is refused when it starts (COMPAT_KEYS: data.aug)
    aug = with_augment(data_cfg.aug, given["aug"].get("augment", data_cfg.aug.augment))
    tuned = tuning({**asdict(data_cfg.tuning), **given["tuning"]})
    return (
        replace(data_cfg, data=data, aug=aug, tuning=tuned, **{"stats": stats, **given["data"]}),
        model_config(**{**asdict(model), **given["model"]}),
        replace(optim, **given["optim"]),
        replace(run, out=out, **given["run"]),
    )


def configs_from_file(
    path: str | os.PathLike, data: str, out: str
) -> tuple[DataConfig, ModelConfig, OptimConfig, RunConfig]:
    """The configs a file gives (`alexnet train --config FILE`): a run's config.json (or its run directory), or a
    recipe file of the same shape, {"data": {...}, "model": {...}, "optim": {...}, "run": {...}} with any of
    their fields (data.aug: AugmentConfig's), the rest the recipe's (optim.recipe, default "paper") as a command
    line would give them. DATA, OUT and the class count are the command's, never the file's. ConfigError with one
    line naming a bad file, section or field."""
    import json

    p = Path(path)
    p = p / runlog.CONFIG if p.is_dir() else p
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {p}: not a readable JSON file ({e})") from None
    cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else cfg  # a run's config.json holds it under "config"
    if not isinstance(cfg, dict) or not all(isinstance(v, dict) for k, v in cfg.items() if k in _SECTIONS):
        raise ConfigError(f"--config {p}: expected a JSON object of sections {', '.join(_SECTIONS)}")
    parts = {k: dict(cfg.get(k, {})) for k in _SECTIONS}
    aug_given = parts["data"].pop("aug", {})
    if not isinstance(parts["data"].get("tuning", {}), dict):
        raise ConfigError(f"--config {p}: data.tuning must be an object of Tuning's fields")
    try:
        tuned = tuning(parts["data"].pop("tuning", {}))
    except ConfigError as e:
        raise ConfigError(f"--config {p}: {e}") from None
    for k, where in (("data", "data"), ("stats", "data"), ("out", "run"), ("num_classes", "model")):
        parts[where].pop(k, None)  # the command's, or the data's
    from alexmodel.model import ModelConfig

    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig), ("run", RunConfig)):
        unknown = sorted(set(parts[section]) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"--config {p}: {section}.{unknown[0]} is no field of {cls.__name__}")
    unknown = sorted(set(aug_given) - {f.name for f in fields(AugmentConfig)})
    if unknown:
        raise ConfigError(f"--config {p}: data.aug.{unknown[0]} is no field of AugmentConfig")
    o = parts["optim"]
    try:
        model, aug, optim = recipe(
            o.get("recipe", "paper"),
            width=parts["model"].pop("width", 1.0),
            batch_size=o.get("batch_size"),
            epochs=o.get("epochs"),
            lr=o.get("lr"),
            augment=aug_given.get("augment", "paper"),
        )
        return (
            DataConfig(data, aug=AugmentConfig(**{**asdict(aug), **aug_given}), tuning=tuned, **parts["data"]),
            model_config(**{**asdict(model), **parts["model"]}),
            replace(optim, **o),
            RunConfig(out=out, **parts["run"]),
        )
    except (TypeError, ValueError) as e:  # a field of the wrong type or out of range
        raise ConfigError(f"--config {p}: {e}") from None


_SECTIONS = ("data", "model", "optim", "run")


def configs_from_options(
    data: str,
    out: str = RunConfig.out,
    *,
    resume: bool | str = False,
    config: str | os.PathLike | None = None,
    **options,
) -> tuple[DataConfig, ModelConfig, OptimConfig, RunConfig]:
    """The configs of `alexnet train DATA --out OUT [options]`. `options` are the ones given, by config field
    name (recipe, epochs, batch_size, lr, width, threads, precision, ...); the others are the run's own on a
    resume (its config.json), the file's with `config` (`configs_from_file`), the recipe's and the configs'
    defaults on a fresh run. A resume or a config file keeps DATA/stats.json (a resume: the checkpoint's
    statistics) unless `stats` is given. resume "auto": a resume when OUT holds a run."""
    unknown = sorted(set(options) - set().union(*_OPTIONS.values()))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r}: expected a field of DataConfig, Tuning, OptimConfig or RunConfig, width "
            f"or augment"
        )
    given = {part: {k: v for k, v in options.items() if k in names} for part, names in _OPTIONS.items()}
    if resume == "auto":
        from alexmodel.checkpoint import holds_run

        resume = holds_run(out)
    if config is not None and resume:
        raise ConfigError("--config with --resume: a resume takes the run's own config.json; give options on top")
    if config is not None and "recipe" in given["optim"]:
        raise ConfigError(f"--recipe with --config {config}: the file's recipe stands; edit the file or drop --config")
    if config is not None:
        return _on_top(configs_from_file(config, data, out), data, out, given, stats=None)
    if resume and os.path.isfile(os.path.join(out, runlog.CONFIG)):
        return _on_top(configs_from_dict(runlog.read_config(out)), data, out, given, stats=None)
    first = {k: given["optim"].pop(k) for k in ("recipe", "batch_size", "epochs", "lr") if k in given["optim"]}
    model, aug, optim = recipe(first.pop("recipe", "paper"), **given["model"], **given["aug"], **first)
    return (
        DataConfig(data, aug=aug, tuning=tuning(given["tuning"]), **given["data"]),
        model,
        replace(optim, **given["optim"]),
        RunConfig(out=out, **given["run"]),
    )


def start_rules(optim: OptimConfig, resumed: dict | None = None, *, say: bool = True) -> OptimConfig:
    """The optimisation settings a run starts with, after the rules of a run's start: a warmup longer than half
    the run is capped to half (it would never reach the peak lr). say: print `start_notices` (rank 0).

    resumed: the checkpoint's optim settings on a resume. The cap then takes the epochs the checkpoint's run was
    set to, so a resume asking the warmup the run was started with gets what the cap made of it then."""
    if say:
        for line in start_notices(optim, resumed):
            print(line, file=sys.stderr)
    epochs = optim.epochs if resumed is None else resumed["epochs"]
    if optim.warmup_epochs > epochs / 2:
        optim = replace(optim, warmup_epochs=epochs / 2)
    return optim


def start_notices(optim: OptimConfig, resumed: dict | None = None) -> list[str]:
    """What a fresh run says of its start: a warmup capped (start_rules), and the paper recipe at another batch
    than 128 the lr the linear rule would give. A resume says nothing."""
    if resumed is not None:
        return []
    lines = []
    if optim.recipe == "paper" and optim.batch_size != PAPER_LR_BATCH and optim.lr == OptimConfig.lr:
        lines.append(
            f"train: the paper recipe keeps lr {optim.lr} at --batch-size {optim.batch_size} (§5's lr is for "
            f"{PAPER_LR_BATCH}); the linear rule would give --lr {optim.lr * optim.batch_size / PAPER_LR_BATCH:g}"
        )
    if optim.warmup_epochs > optim.epochs / 2:
        lines.append(
            f"train: --warmup-epochs {optim.warmup_epochs:g} capped to {optim.epochs / 2:g}, half of the "
            f"{plural(optim.epochs, 'epoch')}"
        )
    return lines


def small_data_batch(images: int) -> int:
    """A batch size for `images` training images: the largest power of two giving at least FEW_STEPS steps an
    epoch (the demo's 64 for 1,000 images); README, "Small data"."""
    return 2 ** max(0, int(math.log2(max(1, images // FEW_STEPS))))


def few_steps_notice(optim: OptimConfig, images: int, steps_per_epoch: int) -> str | None:
    """One line when the recipe's own batch makes fewer than FEW_STEPS steps an epoch on `images` training images
    (the modern recipe's 512 on a few hundred images: one step an epoch at an lr scaled for 512); None otherwise,
    and for a batch size chosen by hand."""
    if steps_per_epoch >= FEW_STEPS or optim.batch_size != recipe(optim.recipe)[2].batch_size:
        return None
    return (
        f"train: {images} training images at the {optim.recipe} recipe's --batch-size {optim.batch_size} make "
        f"{plural(steps_per_epoch, 'step')} an epoch (lr {optim.lr:g}, set for "
        f"{optim.batch_size} images a step); on data this small try --batch-size {small_data_batch(images)} "
        f"(README: Small data)"
    )
