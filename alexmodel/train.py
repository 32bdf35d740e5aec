"""A training run: `train(data, model, optim, run)` builds the loaders, model, optimizer and schedule, goes
epoch by epoch, checkpoints, and records the run in its directory.

    alexnet train DATA --out runs/paper                                   # the paper's recipe, one GPU
    python -m torch.distributed.run --nproc_per_node 8 cli.py train DATA --out runs/ddp   # data parallel

Where the parts live: the configs, recipes and option rules in alexmodel/config.py; the step loop and evaluation
in loop.py; ranks and the stop on a signal in distributed.py; the checkpoint file and its names in
checkpoint.py; config.json, metrics.jsonl, steps.jsonl and plot.png in runlog.py; `alexnet evaluate` in
evaluate.py. The names users import from here (`from alexmodel.train import train, RunConfig, ...`) stay.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alexdata.dataset import check_images, fingerprint, has_split, open_split
from alexdata.errors import TrainError, plural
from alexdata.files import lock_dir
from alexdata.shards import class_names
from alexmodel import checkpoint, distributed, runlog
from alexmodel.checkpoint import model_from_checkpoint, stats_from_checkpoint
from alexmodel.config import (
    COMPAT_KEYS,
    PRECISIONS,
    RECIPES,
    DataConfig,
    OptimConfig,
    RunConfig,
    configs_from_dict,
    configs_from_options,
    few_steps_notice,
    recipe,
    refuse_on_cpu,
    resolve_device,
    small_data_batch,
    start_rules,
)
from alexmodel.distributed import STOPPED_EXIT, Dist, Signals, TrainStopped
from alexmodel.evaluate import evaluate_checkpoint
from alexmodel.loop import EpochMeter, NonFiniteLoss, StopRequested, evaluate, evaluate_views, train_one_epoch
from alexmodel.model import AlexNet, ModelConfig
from alexmodel.schedule import cosine_lr
from pipelines.config import AugmentConfig, PipelineStats

load_checkpoint = checkpoint.load_run  # the name before issue 18


def train(
    data: DataConfig,
    model: ModelConfig,
    optim: OptimConfig,
    run: RunConfig,
    *,
    resume: bool | str = False,
    on_step: Callable | None = None,
) -> dict:
    """Trains AlexNet and records the run in `run.out`. Returns {"run_dir", "history", "model", "checkpoint",
    "rank"}.

    model: width and init are used; num_classes comes from the data, devices from `run.placement`.
    resume: True continues `run.out/checkpoint.pt` exactly (weights, optimizer, schedule, scaler, RNGs and the
        loader's position inside the epoch; from checkpoint.prev.pt when the latest is unreadable); the configs
        must match the checkpoint's (COMPAT_KEYS), `optim.epochs` may grow. On another number of ranks the run
        goes on from the next epoch boundary. "auto": resume when run.out holds a checkpoint, else start.
    Every start gets config.start_rules: the warmup capped to half the run; a fresh run the paper-lr notice.
    on_step(epoch, step, images, labels): called on every rank after every optimizer step (tests, debugging);
        epoch counts from 0, step is the global step count after this one.
    A SIGTERM, SIGUSR1 or SIGINT stops the run after the current step (under DDP: the step every rank agrees on,
    at most run.log_every steps later) with an exact checkpoint, and raises TrainStopped.
    Raises a UserError (TrainError, DataError, ConfigError) with one line for bad inputs."""
    device = resolve_device(run.device)
    run = replace(run, device=device)
    refuse_on_cpu(device, precision=run.precision, placement=run.placement)
    if Path(run.out).resolve().is_relative_to(Path(data.data).resolve()):  # a raw tree would take it for a class
        raise TrainError(f"--out {run.out} is inside DATA {data.data}: choose a run directory outside the data")
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    d = distributed.init(device, run.placement)
    # One writer per run directory (rank 0 writes it), held until train returns; the kernel frees it on a kill
    lock = lock_dir(run.out, what="train", error=TrainError) if d.rank == 0 else None
    try:
        if resume == "auto":
            resume = checkpoint.holds_run(run.out)
        if not resume and checkpoint.holds_run(run.out):
            raise TrainError(
                f"{run.out} already holds a run ({checkpoint.CHECKPOINT}); pass --resume to continue "
                f"it, or choose another --out"
            )
        saved = checkpoint.load_latest(Path(run.out), d.rank) if resume else None
        optim = start_rules(optim, None if saved is None else saved["config"]["optim"], say=d.rank == 0)
        with Signals() as signals:
            return _Run(data, model, optim, run, d, signals, on_step, saved).fit()
    finally:
        if lock is not None:
            lock.close()
        distributed.close(d)


def train_from_options(
    data: str, out: str = RunConfig.out, *, resume: bool | str = False, on_step: Callable | None = None, **options
) -> dict:
    """`alexnet train DATA --out OUT [options]` from Python: options by config field name (epochs, lr,
    batch_size, width, precision, ...); those not given are the run's own on a resume, the recipe's otherwise
    (config.configs_from_options). Returns what train() returns."""
    return train(*configs_from_options(data, out, resume=resume, **options), resume=resume, on_step=on_step)


def _data_inputs(data: str) -> str | None:
    """The prepare inputs' fingerprint (.prepare/params.json), recorded with the run: which raw data it came from."""
    p = Path(data) / ".prepare" / "params.json"
    try:
        return json.loads(p.read_text()).get("inputs")
    except (OSError, ValueError):
        return None


def _same_image(a: PipelineStats, b: PipelineStats) -> bool:
    x, y = a.mean_image_255, b.mean_image_255
    return (x is None) == (y is None) and (x is None or np.array_equal(x, y))


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class _Run:
    """One training run: built from the configs, then `fit` goes epoch by epoch; every rank holds one."""

    def __init__(
        self,
        data: DataConfig,
        model_cfg: ModelConfig,
        optim: OptimConfig,
        run: RunConfig,
        d: Dist,
        signals: Signals,
        on_step: Callable | None,
        saved: dict | None,
    ):
        from alexdata.loader import Loader, resolve_stats

        if optim.batch_size % d.world:
            raise TrainError(
                f"--batch-size {optim.batch_size} does not split over {d.world} ranks; use a multiple of {d.world}"
            )
        self.data, self.optim, self.run, self.d, self.signals, self.on_step = data, optim, run, d, signals, on_step
        self.per_rank = optim.batch_size // d.world
        splits = {"train": open_split(data.data, "train")}
        if run.validate:  # val now: the schedule needs its error
            if not has_split(data.data, "val"):
                raise TrainError(
                    f"{data.data} has no val split: give data with one, or train without validation with --no-val "
                    f"(train metrics only; with --recipe modern, whose cosine schedule needs no val error)"
                )
            splits["val"] = open_split(data.data, "val")
        elif optim.schedule == "plateau":
            raise TrainError(
                "--no-val: the plateau schedule (--recipe paper) cuts the lr when the val error stops improving; "
                "use --recipe modern (a cosine schedule), or data with a val split"
            )
        for split in splits.values():  # a raw tree's bad file would stop DALI mid-epoch: refuse it now
            check_images(data.data, split, data.threads)
        self.classes = splits["train"].classes
        images = splits["train"].images
        if optim.batch_size > images:
            raise TrainError(
                f"--batch-size {optim.batch_size} is more than the {images} images of {data.data}'s train split; "
                f"on data this small try --batch-size {small_data_batch(images)} (README: Small data)"
            )
        self.model_cfg = replace(model_cfg, num_classes=len(self.classes), devices=None)
        self.saved = saved
        if saved is not None and data.stats is None:  # a resume keeps the statistics it trained with
            stats = stats_from_checkpoint(saved)
        else:
            stats = resolve_stats(data.stats, data.data)  # None: DATA/stats.json
            old = None if saved is None else stats_from_checkpoint(saved)
            if old is not None and d.rank == 0 and (stats != old or not _same_image(stats, old)):
                print(f"train: using --stats {data.stats}, not the statistics the run trained with", file=sys.stderr)
        # The mean image goes into the checkpoint beside the config (a tensor), not into config.json (768 KB)
        self.mean_image = None if stats.mean_image_255 is None else torch.from_numpy(stats.mean_image_255)
        self.config = {
            "data": asdict(data),
            "model": {k: getattr(self.model_cfg, k) for k in ("num_classes", "width", "init")},
            "optim": asdict(optim),
            "run": asdict(run),
            "world_size": d.world,
            "stats_255": stats.per_channel(),
            "classes": list(self.classes),
            "class_names": class_names(data.data),  # human-readable, as prepare found them; None when it did not
            "data_inputs": _data_inputs(data.data),
            "data_fingerprint": fingerprint(data.data, splits["train"]),  # the files a loader position fits
        }
        self.run_dir = Path(run.out)
        self.ckpt_path = self.run_dir / checkpoint.CHECKPOINT

        # Same init on every rank (DDP also broadcasts rank 0's weights), then a different dropout stream per rank.
        torch.manual_seed(run.seed)
        np.random.seed(run.seed)
        random.seed(run.seed)
        devices = distributed.tower_devices(run.device, run.placement, d.local_rank)
        net = AlexNet(
            self.model_cfg.num_classes,
            width=self.model_cfg.width,
            init=self.model_cfg.init,
            devices=devices if len(devices) == 2 else None,
        )
        if len(devices) == 1:
            net = net.to(devices[0])
        self.net = net.to(memory_format=torch.channels_last) if run.channels_last else net
        torch.manual_seed(run.seed + 1 + d.rank)
        if run.device == "gpu":
            torch.backends.cudnn.benchmark = True  # fixed 227x227 inputs: pick the fastest conv algorithms once
            torch.backends.cuda.matmul.allow_tf32 = run.tf32  # process-wide, as cudnn.benchmark
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            # fp16 on the GPU: fused, so GradScaler skips an overflowing step on the device; with the default
            # (foreach) SGD it reads the inf check on the host every step
            fused=run.fused_sgd or (run.precision == "fp16" and run.device == "gpu") or None,
        )
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=run.precision == "fp16")
        kw = dict(
            stats=stats,
            aug=data.aug,
            batch_size=self.per_rank,
            device=run.device,
            device_id=devices[0].index or 0,
            threads=data.threads,
            seed=run.seed + d.rank,
            shuffle_seed=run.seed,
            shard_id=d.rank,
            num_shards=d.world,
            prefetch=data.prefetch,
            hw_decoder_load=data.hw_decoder_load,
            layout="NHWC" if run.channels_last else "NCHW",
        )  # channels_last batches: the step copies none
        # torch.compile: only full batches, so the compiled step sees one shape (a partial last batch, or DDP's
        # empty one, would recompile it)
        self.train_loader = Loader(
            data.data,
            split="train",
            mode="train",
            opened=splits["train"],
            drop_last=run.compile,
            echo=data.echo,
            gpu_cache_gb=data.gpu_cache_gb,
            **kw,
        )
        self.val_loader = None
        if run.validate:
            self.val_loader = Loader(data.data, split="val", mode="center", opened=splits["val"], **kw)
        self.steps_per_epoch = len(self.train_loader)
        if saved is None and d.rank == 0 and (line := few_steps_notice(optim, images, self.steps_per_epoch)):
            print(line, file=sys.stderr)
        self.cuda_devices = sorted({p.device for p in self.net.parameters() if p.device.type == "cuda"}, key=str)
        self.history: list[dict] = []
        self.last_saved: tuple[int, int] | None = None
        self.finish_partial = False  # a resume on another rank count ends the epoch in progress where it stands
        self.interactive = sys.stderr.isatty()  # a terminal draws a live bar; Slurm, nohup get plain lines
        self.writer = None
        if run.tensorboard and d.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (opened once the run starts)
            except ImportError:
                raise TrainError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard "
                    "(or the project's [tensorboard] extra)"
                ) from None

    # ------------------------------------------------------------------ checkpoints

    def _restore(self, saved: dict) -> tuple[int, EpochMeter | None]:
        """Loads a checkpoint; returns (epoch to start at, the meter of an epoch in progress)."""
        # AugmentConfig fields added since the checkpoint was written take their defaults (mean: "channel")
        then = {
            **saved["config"],
            "data": {
                "echo": 1,  # saved before data echoing existed
                **saved["config"]["data"],
                "aug": asdict(AugmentConfig(**saved["config"]["data"]["aug"])),
            },
        }
        why = checkpoint.incompatibility(then, self.config, COMPAT_KEYS)
        if why:
            raise TrainError(
                f"cannot resume {self.ckpt_path}: {why}; resume with the run's options "
                f"(see {self.run_dir / runlog.CONFIG}) or train into a new --out"
            )
        files_then = saved["config"].get("data_fingerprint")  # absent in checkpoints written before it
        files_changed = files_then not in (None, self.config["data_fingerprint"])
        if files_changed and saved["meter"]:  # a loader position inside an epoch fits only the files it was on
            raise TrainError(
                f"cannot resume {self.ckpt_path} mid-epoch on {self.data.data}: its train files are not the ones the "
                f"run was reading (prepared again with another --shard-size or --seed?), so the saved position would "
                f"point at other samples; resume on the data the run was trained on"
            )
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups carry the run's old fused flag: speed only
            group["fused"] = self.optimizer.defaults["fused"]
        if self.optim.lr != saved["config"]["optim"]["lr"]:  # a new initial lr: keep the plateau cuts made so far
            for group in self.optimizer.param_groups:
                group["lr"] *= self.optim.lr / saved["config"]["optim"]["lr"]
        self.plateau.load_state_dict(saved["plateau"])
        if saved["scaler"]:  # a run without fp16 saved a disabled scaler's empty state
            self.scaler.load_state_dict(saved["scaler"])
        self.history = saved["history"]
        self.last_saved = (saved["epoch"], saved["step"])
        epoch, meter = saved["epoch"], EpochMeter(**saved["meter"]) if saved["meter"] else None
        from alexdata.loader import StaleLoaderState

        saved_world = len(saved["ranks"])
        why = f"a run checkpointed on {saved_world}"
        if files_changed:
            why = "a run whose train data changed since its checkpoint (prepared again?)"
        if saved_world == self.d.world and not files_changed:
            try:
                self.train_loader.load_state_dict(saved["ranks"][self.d.rank]["loader"])
                checkpoint.set_rng_state(saved["ranks"][self.d.rank]["rng"])  # last: building the model drew from them
                return epoch, meter
            except StaleLoaderState as e:  # the same on every rank: the same code reads the same checkpoint
                why = f"a run whose loader position does not load here ({e})"
        # Another number of ranks (or a loader position from another version): each rank's shard of the epoch is
        # another set of samples, so the positions do not carry over; the run goes on from the next epoch
        # boundary with fresh loaders.
        if self.d.rank == 0:
            skipped = (
                f"; the rest of epoch {epoch + 1} is skipped ({self.train_loader.split.images - meter.images}"
                f" of {self.train_loader.split.images} samples) and the epoch evaluated as it stands"
                if meter
                else ""
            )
            print(
                f"train: resuming on {self.d.world} rank(s) {why}, from the next epoch boundary{skipped}",
                file=sys.stderr,
            )
        self.finish_partial = meter is not None
        return epoch, meter

    def save(self, epoch: int, meter: EpochMeter | None, step: int) -> None:
        """A checkpoint after `step` global steps; epoch = epochs finished (meter None) or the one in progress."""
        if not _all_finite(self.net):
            raise NonFiniteLoss(f"the weights hold NaN/inf after step {step}")
        mine = {"loader": self.train_loader.state_dict(), "rng": checkpoint.rng_state(self.cuda_devices)}
        ranks = distributed.gather(mine, self.d)
        if self.d.rank == 0:
            with self.signals.saving_checkpoint():
                checkpoint.save(
                    self.run_dir,
                    config=self.config,
                    mean_image_255=self.mean_image,
                    epoch=epoch,
                    step=step,
                    meter=None if meter is None else asdict(meter),
                    model=self.net.state_dict(),
                    optimizer=self.optimizer.state_dict(),
                    plateau=self.plateau.state_dict(),
                    scaler=self.scaler.state_dict(),
                    ranks=ranks,
                    history=self.history,
                )
        self.last_saved = (epoch, step)

    # ------------------------------------------------------------------ logging

    def _on_window(self, epoch: int):
        def log(meter: EpochMeter, w: dict) -> None:
            if self.d.rank != 0:
                return
            step = epoch * self.steps_per_epoch + meter.steps
            rec = {
                "step": step,
                "epoch": round(epoch + meter.steps / self.steps_per_epoch, 4),
                **w,
                "time": time.time(),
            }
            runlog.append_step(self.run_dir, rec)
            if self.writer is not None:
                for k in ("loss", "top1", "lr", "images_per_s", "data_wait_frac"):
                    self.writer.add_scalar(f"train/{k}", w[k], step)
            if self.run.progress and not self.interactive:
                print(
                    f"epoch {rec['epoch']:.2f}  step {step}  loss {w['loss']:.3f}  top-1 {100 * w['top1']:.1f}%  "
                    f"lr {w['lr']:.3g}  {w['images_per_s']:.0f} img/s  data wait {100 * w['data_wait_frac']:.0f}%",
                    flush=True,
                )

        return log

    def _after_step(self, epoch: int):
        def after(meter: EpochMeter, images, labels, sync) -> None:
            step = epoch * self.steps_per_epoch + meter.steps
            every = self.run.checkpoint_every
            if every and step % every == 0 and meter.steps < self.steps_per_epoch:
                sync()  # the meter's sums up to this step, for an exact resume
                self.save(epoch, meter, step)
            if self.on_step is not None:
                self.on_step(epoch, step, images, labels)

        return after

    def _lr_at(self, epoch: int) -> Callable[[int], float] | None:
        o, spe = self.optim, self.steps_per_epoch
        if o.schedule != "cosine":
            return None
        return lambda i: cosine_lr(o, spe, epoch * spe + i)

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict:
        from tqdm import tqdm

        saved = self.saved
        start_epoch, meter = self._restore(saved) if saved is not None else (0, None)
        if saved is not None:
            done = saved["epoch"]
            if self.optim.epochs < done or (self.optim.epochs == done and saved["meter"]):
                raise TrainError(
                    f"--epochs {self.optim.epochs}: the run has done {done} epoch(s) "
                    f"{'and part of the next ' if saved['meter'] else ''}already; give more epochs"
                )
            if self.optim.epochs == done and start_epoch >= self.optim.epochs:
                if self.d.rank == 0:  # a kill after the last checkpoint may have cut the record: write it again
                    runlog.restore_record(self.run_dir, self.history)
                    print(
                        f"train: nothing to do: {self.run_dir} finished its {plural(done, 'epoch')} (give --epochs "
                        f"N to train longer)",
                        file=sys.stderr,
                    )
                return self._result()
        if self.d.rank == 0:
            checkpoint.start(self.run_dir, saved)
            if self.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            resumed_at = None if saved is None else {"epoch": saved["epoch"], "step": saved["step"]}
            runlog.write_config(
                self.run_dir, self.config, device=self.run.device, classes=list(self.classes), resumed_at=resumed_at
            )
            if saved is not None:  # the checkpoint's history is the truth: drop lines it does not hold
                runlog.write_metrics(self.run_dir, self.history)
            runlog.truncate_steps(self.run_dir, saved["step"] if saved is not None else 0)
        model = self.net
        if self.d.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.net.fc8.weight.device]
                if self.run.device == "gpu" and self.run.placement == "single"
                else None,
            )
        if self.run.compile:
            model = torch.compile(model)
        show = self.run.progress and self.interactive and self.d.rank == 0
        epoch = start_epoch
        try:
            if self.finish_partial:
                self._end_epoch(epoch, meter)
                start_epoch, meter = epoch + 1, None
            for epoch in range(start_epoch, self.optim.epochs):
                desc = f"epoch {epoch + 1}/{self.optim.epochs}" + (
                    f" (val top-1 {100 * self.history[-1]['val_top1']:.1f}%)"
                    if self.history and self.history[-1]["val_top1"] is not None
                    else ""
                )
                bar = (
                    tqdm(
                        total=self.steps_per_epoch,
                        initial=meter.steps if meter else 0,
                        unit="step",
                        leave=False,
                        desc=desc,
                        dynamic_ncols=True,
                    )
                    if show
                    else None
                )
                stopped = False
                try:
                    meter = train_one_epoch(
                        model,
                        self.optimizer,
                        self.train_loader,
                        precision=self.run.precision,
                        scaler=self.scaler,
                        channels_last=self.run.channels_last,
                        label_smoothing=self.optim.label_smoothing,
                        lr_at=self._lr_at(epoch),
                        meter=meter,
                        after_step=self._after_step(epoch),
                        bar=bar,
                        log_every=self.run.log_every,
                        on_window=self._on_window(epoch),
                        stop=self.signals.stop,
                    )
                except StopRequested as e:
                    meter, stopped = e.meter, True
                finally:
                    if bar is not None:
                        bar.close()
                if stopped and meter.steps < self.steps_per_epoch:
                    step = epoch * self.steps_per_epoch + meter.steps
                    if self.last_saved != (epoch, step):  # a --checkpoint-every save of this very step
                        self.save(epoch, meter, step)
                    raise TrainStopped(self._stopped_line(epoch, step), self.d.rank)
                self._end_epoch(epoch, meter)
                meter = None
                last = epoch + 1 == self.optim.epochs  # the run is done: a late signal changes nothing
                on = self.net.fc8.weight.device  # this rank's first device
                if not last and (stopped or distributed.any_rank(self.signals.stop(), self.d, on)):
                    raise TrainStopped(self._stopped_line(epoch + 1, (epoch + 1) * self.steps_per_epoch), self.d.rank)
        except NonFiniteLoss as e:
            if self.last_saved:
                where = (
                    f"kept the last good checkpoint {self.ckpt_path} (epoch {self.last_saved[0]}, step "
                    f"{self.last_saved[1]}); continue with --resume and a lower --lr"
                )
            else:
                where = "no checkpoint was written yet; start again with a lower --lr"
            hint = ", or fp32" if self.run.precision != "fp32" else ""
            raise TrainError(f"epoch {epoch + 1}: {e}: training stopped; {where}{hint}") from None
        except torch.cuda.OutOfMemoryError:
            half = max(1, self.optim.batch_size // 2)
            raise TrainError(
                f"out of GPU memory with {self.per_rank} images per GPU (--batch-size "
                f"{self.optim.batch_size}); try --batch-size {half}"
            ) from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return self._result()

    def _result(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "history": self.history,
            "model": self.net,
            "checkpoint": self.ckpt_path,
            "rank": self.d.rank,
        }

    def _end_epoch(self, epoch: int, meter: EpochMeter) -> None:
        t_eval = time.perf_counter()
        val = (
            evaluate(self.net, self.val_loader, precision=self.run.precision, channels_last=self.run.channels_last)
            if self.val_loader is not None
            else dict.fromkeys(("loss", "top1", "top5"))  # --no-val: no val metrics (None in metrics.jsonl)
        )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.optim.schedule == "plateau":
            self.plateau.step(1.0 - val["top1"])  # paper §5: watches the validation error rate
        self.history.append(
            {
                "epoch": epoch + 1,
                "step": (epoch + 1) * self.steps_per_epoch,
                **meter.summary(),
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "lr": lr,
                "epoch_s": meter.step_s,
                "eval_s": time.perf_counter() - t_eval,
                "host_syncs": meter.host_syncs,
                "time": time.time(),
            }
        )
        self.save(epoch + 1, None, (epoch + 1) * self.steps_per_epoch)
        if self.d.rank == 0:
            m = self.history[-1]
            runlog.write_metrics(self.run_dir, self.history)
            runlog.plot(self.run_dir, self.history, runlog.read_steps(self.run_dir))
            if self.writer is not None:
                for k in ("val_loss", "val_top1", "val_top5", "train_loss", "train_top1"):
                    if m[k] is not None:
                        self.writer.add_scalar(f"epoch/{k}", m[k], m["step"])
            _print_epoch(m, self.optim.epochs)

    def _stopped_line(self, epoch: int, step: int) -> str:
        distributed.barrier(self.d)  # every rank is past the checkpoint before any exits (torchrun ends the rest)
        where = (
            f"{plural(step % self.steps_per_epoch, 'step')} into epoch {epoch + 1}"
            if step % self.steps_per_epoch
            else f"after epoch {step // self.steps_per_epoch}"
        )
        by = self.signals.received or "a signal to another rank"
        return f"stopped by {by} at step {step} ({where}); checkpoint {self.ckpt_path}"


def _print_epoch(m: dict, epochs: int) -> None:
    from tqdm import tqdm

    val = (
        f"val top-1 {100 * m['val_top1']:5.1f}%  top-5 {100 * m['val_top5']:5.1f}%"
        if m["val_top1"] is not None
        else "no val split"
    )
    tqdm.write(
        f"epoch {m['epoch']:>3}/{epochs}  loss {m['train_loss']:.3f}  train {100 * m['train_top1']:5.1f}%  "
        f"{val}  lr {m['lr']:.3g}  "
        f"{m['images_per_s']:.0f} img/s  data wait {100 * m['data_wait_frac']:.0f}%"
    )


__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "EpochMeter",
    "TrainError",
    "TrainStopped",
    "recipe",
    "train",
    "train_from_options",
    "train_one_epoch",
    "cosine_lr",
    "evaluate",
    "evaluate_views",
    "evaluate_checkpoint",
    "configs_from_dict",
    "load_checkpoint",
    "model_from_checkpoint",
    "stats_from_checkpoint",
    "RECIPES",
    "COMPAT_KEYS",
    "PRECISIONS",
    "STOPPED_EXIT",
    "StopRequested",
    "NonFiniteLoss",
    "resolve_device",
    "AugmentConfig",
    "ModelConfig",
]
