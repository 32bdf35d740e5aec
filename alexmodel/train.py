"""A training run: `train(data, model, optim, run)` builds the loaders, model, optimizer and schedule, goes
epoch by epoch, checkpoints, and records the run in its directory.

    alexnet train DATA --out runs/paper                                   # the paper's recipe, one GPU
    python -m torch.distributed.run --nproc_per_node 8 cli.py train DATA --out runs/ddp   # data parallel

Where the parts live: the configs, recipes and option rules in alexmodel/config.py; the splits' checks and
the loaders in loaders.py; the network, SGD, schedule and scaler in build.py; the step loop and evaluation in
loop.py; ranks and the stop on a signal in distributed.py; the checkpoint file and its names in checkpoint.py;
what a resume restores and refuses in resume.py; config.json, metrics.jsonl, steps.jsonl and plot.png in
runlog.py; the bar and lines printed in progress.py; `alexnet evaluate` in evaluate.py. Each name is imported
from the module it lives in (the configs from alexmodel.config, `train_one_epoch` from alexmodel.loop, ...).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from alexdata import host
from alexdata.dataset import fingerprint
from alexdata.errors import TrainError, UserError, plural
from alexdata.files import lock_dir
from alexdata.shards import class_names
from alexmodel import checkpoint, distributed, runlog
from alexmodel.build import build_net, build_optimizer
from alexmodel.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    configs_from_options,
    few_steps_notice,
    refuse_on_cpu,
    resolve_device,
    start_notices,
    start_rules,
)
from alexmodel.distributed import Dist, Signals, TrainStopped
from alexmodel.loaders import data_inputs, make_loaders, open_splits
from alexmodel.loop import EpochMeter, NonFiniteLoss, StopRequested, evaluate, train_one_epoch
from alexmodel.model import ModelConfig
from alexmodel.progress import epoch_bar, print_epoch, window_line
from alexmodel.resume import check_compatible, load_state, refuse_fewer_epochs, restore_loader, run_stats, saved_run
from alexmodel.schedule import cosine_lr


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
    # torch's default is a thread per core of the whole node (a cgroup quota, other ranks ignored): never more
    # than this rank's share of the cores it may use
    torch.set_num_threads(run.torch_threads or min(torch.get_num_threads(), host.cores_per_rank()))
    d = distributed.init(device, run.placement)
    fresh = not os.path.exists(run.out)  # a run refused before it writes anything leaves no empty --out behind
    # One writer per run directory (rank 0 writes it), held until train returns; the kernel frees it on a kill
    lock = lock_dir(run.out, what="train", error=TrainError) if d.rank == 0 else None
    try:
        saved = saved_run(run.out, resume, d.rank)
        resumed = None if saved is None else saved["config"]["optim"]
        notices = start_notices(optim, resumed) if d.rank == 0 else []
        if d.rank == 0 and device == "cpu" and not run.torch_threads and (line := busy_notice()):
            notices.append(line)
        optim = start_rules(optim, resumed, say=False)
        with Signals() as signals:
            the_run = _Run(data, model, optim, run, d, signals, on_step, saved)  # every check of the inputs
            for line in notices:  # said once the run is sure to start: a refusal comes alone
                print(line, file=sys.stderr)
            return the_run.fit()
    finally:
        # The run's loaders sit in reference cycles: their DALI pipelines, and threads, end here rather than at
        # interpreter exit, where DALI's teardown once aborted a finished torchrun rank ("terminate called").
        gc.collect()
        if lock is not None:
            lock.close()
            if fresh:
                with contextlib.suppress(OSError):  # only while empty: a run that wrote anything keeps it all
                    os.rmdir(run.out)
        distributed.close(d)


def busy_notice() -> str | None:
    """A line when other jobs keep this machine's cores busy: there every torch compute thread waits for a core
    (on 2 cores at load 3-6, a user measured 15-45 img/s with torch's default threads and 2.5-3.3x that with one)."""
    load, n = os.getloadavg()[0], host.cores()
    if load <= n + 1:
        return None
    return (
        f"train: this machine is busy (load {load:.1f} on {plural(n, 'core')}): CPU training may go several times "
        f"faster with --torch-threads 1"
    )


def train_from_options(
    data: str, out: str = RunConfig.out, *, resume: bool | str = False, on_step: Callable | None = None, **options
) -> dict:
    """`alexnet train DATA --out OUT [options]` from Python: options by config field name (epochs, lr,
    batch_size, width, precision, ...); those not given are the run's own on a resume, the recipe's otherwise
    (config.configs_from_options). Returns what train() returns."""
    return train(*configs_from_options(data, out, resume=resume, **options), resume=resume, on_step=on_step)


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
        try:
            splits, problem = open_splits(data, optim, validate=run.validate, d=d), None
        except TrainError as e:  # an option that does not fit the data: the statistics are checked all the same,
            splits, problem = None, e  # so both problems come in one go (data that cannot be read comes alone)
        try:
            stats = run_stats(data, saved, d.rank, None if splits is None else splits["train"].images)
        except UserError as e:
            raise e if problem is None else TrainError(f"{problem}; and {e}") from None
        if problem is not None:
            raise problem
        self.data, self.optim, self.run, self.d, self.signals, self.on_step = data, optim, run, d, signals, on_step
        self.per_rank = optim.batch_size // d.world
        self.classes = splits["train"].classes
        images = splits["train"].images
        self.model_cfg = replace(model_cfg, num_classes=len(self.classes), devices=None)
        self.saved = saved
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
            "data_inputs": data_inputs(data.data),
            "data_fingerprint": fingerprint(data.data, splits["train"]),  # the files a loader position fits
        }
        self.run_dir = Path(run.out)
        self.ckpt_path = self.run_dir / checkpoint.CHECKPOINT

        self.net, devices = build_net(self.model_cfg, run, d)
        self.optimizer, self.plateau, self.scaler = build_optimizer(self.net, optim, run)
        self.train_loader, self.val_loader = make_loaders(
            data, run, splits, stats=stats, batch_size=self.per_rank, device_id=devices[0].index or 0, d=d
        )
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
        files_changed = check_compatible(
            saved, self.config, ckpt_path=self.ckpt_path, run_dir=self.run_dir, data=self.data.data
        )
        load_state(
            saved, net=self.net, optimizer=self.optimizer, plateau=self.plateau, scaler=self.scaler, lr=self.optim.lr
        )
        self.history = saved["history"]
        self.last_saved = (saved["epoch"], saved["step"])
        epoch, meter = saved["epoch"], EpochMeter(**saved["meter"]) if saved["meter"] else None
        if not restore_loader(saved, self.train_loader, self.d, files_changed=files_changed, meter=meter):
            self.finish_partial = meter is not None  # the epoch in progress ends where it stands
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
                print(window_line(rec, w), flush=True)

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
        """The run from where it stands to its last epoch: start (or the "nothing to do" of a finished run), then
        epoch by epoch; a stop on a signal raises TrainStopped after its checkpoint."""
        saved = self.saved
        start_epoch, meter = self._restore(saved) if saved is not None else (0, None)
        if saved is not None and self._finished(saved, start_epoch):
            return self._result()
        if self.d.rank == 0:
            self._start_record(saved, start_epoch, meter)
        model = self._wrapped()
        epoch = start_epoch
        try:
            if self.finish_partial:
                self._end_epoch(epoch, meter)
                start_epoch, meter = epoch + 1, None
            for epoch in range(start_epoch, self.optim.epochs):
                self._epoch(model, epoch, meter)
                meter = None
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

    def _finished(self, saved: dict, start_epoch: int) -> bool:
        """Whether a resumed run has nothing left to do (its record written again, and said); refuses fewer epochs
        than it has done."""
        refuse_fewer_epochs(saved, self.optim.epochs)
        done = saved["epoch"]
        if not (self.optim.epochs == done and start_epoch >= self.optim.epochs):
            return False
        if self.d.rank == 0:  # a kill after the last checkpoint may have cut the record: write it again
            runlog.restore_record(self.run_dir, self.history)
            print(
                f"train: nothing to do: {self.run_dir} finished its {plural(done, 'epoch')} (give --epochs "
                f"N to train longer)",
                file=sys.stderr,
            )
        return True

    def _start_record(self, saved: dict | None, start_epoch: int, meter: EpochMeter | None) -> None:
        """Rank 0's record of the start: the checkpoint names, config.json, metrics and steps cut to the
        checkpoint's, TensorBoard; a resume says where it resumed."""
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
            into = f"{plural(meter.steps, 'step')} into" if meter is not None else "at the start of"
            print(
                f"train: resumed {self.run_dir} after step {saved['step']}, {into} epoch {start_epoch + 1}/"
                f"{self.optim.epochs}",
                file=sys.stderr,
            )
        runlog.truncate_steps(self.run_dir, saved["step"] if saved is not None else 0)

    def _wrapped(self) -> torch.nn.Module:
        """The net as the steps call it: under DDP on more than one rank, compiled with run.compile."""
        model = self.net
        if self.d.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.net.fc8.weight.device]
                if self.run.device == "gpu" and self.run.placement == "single"
                else None,
            )
        return torch.compile(model) if self.run.compile else model

    def _epoch(self, model: torch.nn.Module, epoch: int, meter: EpochMeter | None) -> None:
        """Epoch `epoch` (from 0), continuing `meter` mid-epoch, then its evaluation and checkpoint; TrainStopped
        after the checkpoint of a stop asked for during it (or, with more epochs to go, at its end)."""
        show = self.run.progress and self.interactive and self.d.rank == 0
        bar = (
            epoch_bar(
                epoch, self.optim.epochs, self.history, total=self.steps_per_epoch, initial=meter.steps if meter else 0
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
        last = epoch + 1 == self.optim.epochs  # the run is done: a late signal changes nothing
        on = self.net.fc8.weight.device  # this rank's first device
        if not last and (stopped or distributed.any_rank(self.signals.stop(), self.d, on)):
            raise TrainStopped(self._stopped_line(epoch + 1, (epoch + 1) * self.steps_per_epoch), self.d.rank)

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
            print_epoch(m, self.optim.epochs)

    def _stopped_line(self, epoch: int, step: int) -> str:
        distributed.barrier(self.d)  # every rank is past the checkpoint before any exits (torchrun ends the rest)
        where = (
            f"{plural(step % self.steps_per_epoch, 'step')} into epoch {epoch + 1}"
            if step % self.steps_per_epoch
            else f"after epoch {step // self.steps_per_epoch}"
        )
        by = self.signals.received or "a signal to another rank"
        return f"stopped by {by} at step {step} ({where}); checkpoint {self.ckpt_path}"
