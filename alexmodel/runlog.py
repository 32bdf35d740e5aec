"""The record every training run leaves in its directory:

    config.json     the resolved configuration, the code revision, library versions and the machine
    metrics.jsonl   one JSON object per epoch (train loss/top-1, val top-1/top-5, lr, images/s, data wait)
    steps.jsonl     one JSON object per logging window of --log-every steps (step, epoch as a fraction, loss,
                    top-1, lr, images/s, data wait): the loss moving within minutes, long before an epoch ends
    plot.png        loss, accuracy and learning-rate curves per epoch, and the loss per step window
    checkpoint.pt   the latest checkpoint, checkpoint.prev.pt the one before it (alexmodel/checkpoint.py owns
                    every checkpoint name)

Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from alexdata import host
from alexdata.errors import TrainError
from alexdata.files import append_open, atomic_write

CONFIG, METRICS, PLOT, STEPS = "config.json", "metrics.jsonl", "plot.png", "steps.jsonl"


def git_revision() -> str:
    """`git rev-parse HEAD` of the code's checkout, or "unknown" (an installed copy, no git)."""
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def write_config(run_dir: Path, config: dict, *, device: str, **extra) -> dict:
    """config.json: {"config": the resolved configs, "revision", versions, machine, command, ...extra}; device:
    the run's ("gpu" records the GPU)."""
    m = host.machine(device)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = {
        "config": config,
        "revision": git_revision(),
        "started": now,
        "command": sys.argv,
        "python": m["python"],
        "torch": m.get("torch"),
        "dali": m.get("dali", "not installed"),
        "host": m["host"],
        "gpu": m.get("gpu"),
        **extra,
    }
    try:  # a resume: the run's first command and start stay, this command joins the list of resumes
        old = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        old = None
    if extra.get("resumed_at") and isinstance(old, dict):
        record["command"], record["started"] = old.get("command", sys.argv), old.get("started", now)
        record["resumes"] = old.get("resumes", []) + [{"command": sys.argv, "at": now, **extra["resumed_at"]}]
    atomic_write(run_dir / CONFIG, json.dumps(record, indent=1, default=str) + "\n")
    return record


def read_config(run_dir: str | os.PathLike) -> dict:
    p = Path(run_dir) / CONFIG
    try:
        return json.loads(p.read_text())["config"]
    except FileNotFoundError:
        raise TrainError(f"{p}: not found (is {run_dir} a run directory?)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TrainError(f"{p}: not a run's config.json ({e})") from None


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl from the whole history (the checkpoint's copy), so file and checkpoint always agree."""
    atomic_write(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in history))


def restore_record(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and plot.png again from the checkpoint's history where they do not hold it (a kill between
    the last checkpoint and writing them)."""
    text = "".join(json.dumps(m) + "\n" for m in history)
    metrics = run_dir / METRICS
    if metrics.is_file() and metrics.read_text() == text and (run_dir / PLOT).is_file():
        return
    write_metrics(run_dir, history)
    plot(run_dir, history, read_steps(run_dir))


def append_step(run_dir: Path, rec: dict) -> None:
    """One line of steps.jsonl (appended: a line per window, never rewritten while the run goes on)."""
    with append_open(run_dir / STEPS) as f:
        f.write(json.dumps(rec) + "\n")


def read_steps(run_dir: Path) -> list[dict]:
    p = run_dir / STEPS
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return out


def truncate_steps(run_dir: Path, step: int) -> None:
    """Keep the steps.jsonl lines up to `step` (a resume continues from the checkpoint's step)."""
    kept = [r for r in read_steps(run_dir) if r["step"] <= step]
    if kept or (run_dir / STEPS).exists():
        atomic_write(run_dir / STEPS, "".join(json.dumps(r) + "\n" for r in kept))


def plot(run_dir: Path, history: list[dict], steps: list[dict] | None = None) -> None:
    """plot.png: loss, accuracy (%) and learning rate against epoch, and the loss per step window."""
    # The object API with Agg: files only, no display on training machines, no pyplot state; margins set by hand
    # (the constrained layout engine took half of each redraw, and the plot is redrawn every epoch)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [m["epoch"] for m in history]
    fig = Figure(figsize=(17, 3.6))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr, ax_step = fig.subplots(1, 4)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.15, top=0.9, wspace=0.24)
    if steps:  # a marker per window where there are few: one window alone (a short run) is no line
        style = "-" if len(steps) > 40 else "o-"
        ax_step.plot([r["step"] for r in steps], [r["loss"] for r in steps], style, lw=1, ms=3)
    ax_step.set(xlabel="optimizer step", ylabel="cross-entropy", title="train loss per logging window")
    ax_step.grid(alpha=0.3)
    val = any(m["val_loss"] is not None for m in history)  # None: a run without a val split (--no-val)
    ax_loss.plot(ep, [m["train_loss"] for m in history], "o-", ms=3, label="train")
    if val:
        ax_loss.plot(ep, [_nan(m["val_loss"]) for m in history], "o-", ms=3, label="val (centre crop)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for key, label in (("train_top1", "train top-1 (running)"), ("val_top1", "val top-1"), ("val_top5", "val top-5")):
        if val or key == "train_top1":
            ax_acc.plot(ep, [100 * _nan(m[key]) for m in history], "o-", ms=3, label=label)
    ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy", ylim=(0, 100))
    ax_lr.plot(ep, [m["lr"] for m in history], "o-", ms=3)
    ax_lr.set(xlabel="epoch", title="learning rate (last step of the epoch)")
    if all(m["lr"] > 0 for m in history):
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    atomic_write(run_dir / PLOT, buf.getvalue())


def _nan(x: float | None) -> float:
    """A metric for a curve: None (no val split in that epoch) as a gap."""
    return float("nan") if x is None else x
