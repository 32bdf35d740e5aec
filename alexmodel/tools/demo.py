"""`alexnet demo`: the whole workflow on a generated mini-ImageNet, in minutes on a laptop CPU.

    synth (10 classes) -> prepare (shards) -> stats -> train -> evaluate (centre crop and ten-crop)

Each stage writes the files the next one reads, under OUT: raw/ (ILSVRC-2012 layout), data/ (shards, manifest,
stats.json), run/ (config.json, metrics.jsonl, steps.jsonl, plot.png, checkpoint.pt). Running it again reuses
finished stages. The model is the paper's at 1/8 width with the "modern" recipe (alexmodel/config.py): at this
width the paper's N(0, 0.01) init sits at chance for many epochs.

How long it takes and what it reaches on a laptop-sized CPU: docs/BENCHMARKS.md, "The demo".
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    classes: int = 10
    train_per_class: int = 100  # 1,000 training images: minutes on a CPU for the whole demo (docs/BENCHMARKS.md)
    val_per_class: int = 20  # 200 val images: top-1 in steps of 0.5 %
    width: float = 0.125  # 1/8 of the paper's channels: 0.9 M parameters, CPU-sized
    recipe: str = "modern"  # Kaiming init on std-normalised inputs: learns from the first epoch
    epochs: int = 10  # val top-1 passes 90 % after a few epochs on this data (docs/BENCHMARKS.md); 10 leave a margin
    batch_size: int = 64  # 16 steps per epoch
    lr: float = 0.02  # peak; higher than the linear rule's 0.005 at batch 64: few steps, an easy task
    warmup_epochs: float = 2.0  # the recipe's 5 would be half the run
    log_every: int = 4  # steps.jsonl: four lines an epoch
    seed: int = 0


def run_demo(
    out: str | os.PathLike = "demo", cfg: DemoConfig = DemoConfig(), *, device: str = "auto", log=print
) -> dict:
    """Runs every stage (skipping those already done under `out`); returns the results and where they are."""
    from alexdata.prepare import PrepareConfig, prepare
    from alexdata.stats import compute_stats
    from alexdata.statsfile import write_stats
    from alexdata.synth import SynthConfig, make_synth
    from alexmodel import runlog
    from alexmodel.config import DataConfig, RunConfig, recipe, resolve_device
    from alexmodel.evaluate import evaluate_checkpoint
    from alexmodel.tools import synth_done
    from alexmodel.train import train

    out = Path(out)
    raw, data, run_dir = out / "raw", out / "data", out / "run"
    device = resolve_device(device)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    synth_cfg = SynthConfig(cfg.classes, cfg.train_per_class, cfg.val_per_class, seed=cfg.seed)
    if not synth_done(raw, synth_cfg):
        log(f"demo 1/5 synth: {cfg.classes} classes x {cfg.train_per_class} train + {cfg.val_per_class} val -> {raw}")
        shutil.rmtree(raw, ignore_errors=True)  # an earlier demo's other or unfinished images
        make_synth(raw, synth_cfg)
    times["synth_s"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"demo 2/5 prepare -> {data}")
    prepare(raw, data, PrepareConfig(), log=log)  # resumable: writes only missing shards
    times["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if not (data / "stats.json").is_file():
        log(f"demo 3/5 stats -> {data / 'stats.json'}")
        write_stats(compute_stats(data, device=device, progress=True), data / "stats.json")
    times["stats_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model, aug, optim = recipe(cfg.recipe, width=cfg.width, batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr)
    optim = replace(optim, warmup_epochs=cfg.warmup_epochs)
    log(f"demo 4/5 train: AlexNet width {cfg.width}, {cfg.recipe} recipe, {cfg.epochs} epochs on {device} -> {run_dir}")
    result = train(
        DataConfig(str(data), aug=aug),
        model,
        optim,
        RunConfig(out=str(run_dir), device=device, seed=cfg.seed, log_every=cfg.log_every),
        resume="auto",
    )  # run again, the demo finds its finished run: nothing to train
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    log("demo 5/5 evaluate: centre crop and ten-crop")
    centre = evaluate_checkpoint(data, result["checkpoint"], device=device)
    ten = evaluate_checkpoint(data, result["checkpoint"], device=device, ten_crop=True)
    times["evaluate_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t_all
    return {
        "val_top1": centre["top1"],
        "val_top5": centre["top5"],
        "ten_crop_top1": ten["top1"],
        "ten_crop_top5": ten["top5"],
        "val_images": centre["images"],
        "device": device,
        **times,
        "run_dir": str(run_dir),
        "metrics": str(run_dir / runlog.METRICS),
        "plot": str(run_dir / runlog.PLOT),
    }
