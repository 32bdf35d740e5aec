"""`alexnet check`: does everything work on this machine, and how fast is it? One command, six stages.

    alexnet check --device gpu --size full --budget-s 450 --out results/     # a new GPU box (docs/GPU.md)
    alexnet check --device cpu --size tiny --out /tmp/check                    # the same code on a laptop

The stages (alexmodel/tools/check_stages.py) run in order of value, each time-boxed inside the budget (a stage's
box is its weight's share of what is left, so time one stage leaves unused goes to the next):

    data        synth -> prepare -> stats on generated ImageNet-sized JPEGs, with all cores; each step's rate
                (--size full: prepare's output written directly from textures in seconds, alexdata/textures.py)
    train       first, as the figure a short GPU lease must return: synthetic images/s (fp32, bf16, bf16 +
                channels_last), then end to end through the Loader with the best precision and the best loader
                settings known (the defaults, unless an earlier loader stage found better) against the default
                ones (images/s, data wait); the step's heaviest operators (`profile`); every LRN implementation
                against the default and the net without LRN (`lrn`); TF32 matmuls and fused SGD each beside the
                plain setting (`tf32`, `fused_sgd`: which `wins`), the trainer's host-sync ratio, both towers on
                one device; on a GPU also data echoing 2 and the decoded-image cache end to end, each
                convolution's TFLOP/s in NCHW and NHWC, twice the batch, and torch.compile if the box allows
    loader      decode_only / pipeline images/s as `bench loader` measures them; on a GPU whether the hardware
                JPEG decoder is really used (`hw_decoder`: decode only at hw_decoder_load 0 and 1); a sweep of
                hw_decoder_load, hybrid_huffman_threshold, the preallocation hints (GPU only; `sweep_skipped`
                says why a knob was left out), threads, batch size, prefetch and the NHWC layout, whose `best` is
                the fastest setting found, timed again against the default `repeats` times interleaved; last
                the PyTorch DataLoader baseline (a failure: `baseline_error`)
    tests       on a GPU `pytest -m gpu`; on the CPU a quick subset; passed/failed counts, failing tests' names
    stats       the stats pass's images/s against decode only, on the device
    paper_init  the paper's recipe (N(0, 0.01) init, unit biases, lr 0.01, batch 128) on the stage-1 data for
                about a minute: when does the loss leave chance, ln(classes)?

After every stage OUT/check.json is rewritten atomically, so a killed run keeps what it measured:
    {"machine": {...}, "result_name": "h200-2026-11-27.json" (docs/GPU.md),
     "stages": {NAME: {"status": "ok"|"failed"|"skipped"|"timeout", "seconds": S,
                       "error": "one line, when not ok", ...figures}}}
Figures are plain numbers: images/s as floats, shares as fractions in [0, 1]. OUT/check.md holds the table
printed at the end. The time boxes are kept between measurements: a single step (synthesising the data, one
pytest run) is never cut short, except pytest, which is stopped at its box.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from alexdata import host
from alexdata.errors import ConfigError
from alexdata.files import atomic_write
from alexmodel.tools.check_stages import (
    GPU_TESTS,
    QUICK_TESTS,
    CheckSize,
    Context,
    StageSkipped,
    StageTimeout,
    finished_data,
    one_line,
    stage_data,
    stage_loader,
    stage_paper_init,
    stage_stats,
    stage_tests,
    stage_train,
)

STAGES = ("data", "train", "loader", "tests", "stats", "paper_init")
# Shares of the budget: a stage's box is its weight over the weights of the stages still to run, times the time
# left. Set from the CPU rehearsal and the GPU runs in docs/GPU.md (the data stage's cost, the GPU tests' need).
# Shares of what is left when each stage starts. On the H200 (2026-12-04) the loader's sweep filled a 106 s box
# before its repeats of best against default, and the GPU tests, one at a time, a 104 s one; the tests now run
# on 4 workers, so the loader takes some of their share.
WEIGHTS = {"data": 0.05, "train": 0.35, "loader": 0.25, "tests": 0.15, "stats": 0.05, "paper_init": 0.1}

SIZES = {
    # ~20k samples of 512 ImageNet-sized JPEGs (~35 KB each, ~0.7 GB of shards), written directly as prepare's
    # output (alexdata/textures.py) in seconds: synth -> prepare took most of a lent GPU's first 93 s.
    # ~13 sweep points of ~5 s each (3 timed, the rest building and warming up): the loader stage's box on a GPU.
    "full": CheckSize(
        classes=100,
        train_per_class=200,
        val_per_class=10,
        shard_size=1024,
        width=1.0,
        batch_size=256,
        loader_seconds=3.0,
        train_steps=200,
        paper_init_s=60.0,
        data="textures",
        repeats=3,
    ),
    # A few hundred images: every stage in a minute or two on 2 CPU cores (docs/BENCHMARKS.md, the CPU rehearsal).
    "tiny": CheckSize(
        classes=4,
        train_per_class=60,
        val_per_class=5,
        shard_size=64,
        width=0.125,
        batch_size=32,
        loader_seconds=0.3,
        train_steps=4,
        paper_init_s=3.0,
        prefetch=(2, 3),
    ),
}


def machine_info(device: str) -> dict:
    """check.json's "machine": host.machine(device) and the date (UTC)."""
    return {**host.machine(device), "date": host.utc_now()}


def gpu_slug(name: str) -> str:
    """The model in a device name: "NVIDIA H200" -> "h200", "NVIDIA H100 80GB HBM3" -> "h100",
    "NVIDIA A100-SXM4-80GB" -> "a100", "NVIDIA GeForce RTX 4090" -> "rtx-4090"."""
    words = [w for w in re.split(r"[\s_-]+", name.lower()) if w and w not in ("nvidia", "tesla", "geforce")]
    end = next((i for i, w in enumerate(words) if any(c.isdigit() for c in w)), len(words) - 1)
    return "-".join(words[: end + 1]) or "gpu"


def result_name(machine: dict, size: str) -> str:
    """Where check.json goes in docs/results/: the GPU found (or cpu<cores>), the date, and the size unless full."""
    what = gpu_slug(machine["gpu"]) if machine.get("gpu") else f"cpu{machine['cores']}"
    return f"{what}-{machine['date'][:10]}{'' if size == 'full' else '-' + size}.json"


STAGE_FNS: dict[str, Callable[[Context, dict], None]] = {
    "data": stage_data,
    "tests": stage_tests,
    "loader": stage_loader,
    "stats": stage_stats,
    "train": stage_train,
    "paper_init": stage_paper_init,
}

# The figures of each stage's summary line and table row: (key path, label, format).
HEADLINES = {
    "data": [
        ("synth_img_s", "synth", "{:.0f} img/s"),
        ("prepare_img_s", "prepare", "{:.0f} img/s"),
        ("stats_img_s", "stats", "{:.0f} img/s"),
        ("train_images", "train images", "{}"),
    ],
    "tests": [
        ("passed", "passed", "{}"),
        ("failed", "failed", "{}"),
        ("error", "errors", "{}"),
        ("skipped", "skipped", "{}"),
    ],
    "loader": [
        ("decode_only", "decode only", "{:.0f} img/s"),
        ("pipeline", "pipeline", "{:.0f} img/s"),
        ("baseline", "baseline", "{:.0f} img/s"),
        ("best.img_s", "best", "{:.0f} img/s"),
        ("hw_decoder.used", "hardware decoder used", "{}"),
    ],
    "stats": [("stats_img_s", "stats", "{:.0f} img/s"), ("stats_vs_decode_only", "of decode only", "{:.0%}")],
    "train": [
        ("synthetic_img_s.fp32", "fp32", "{:.0f} img/s"),
        ("synthetic_img_s.bf16_channels_last", "bf16 cl", "{:.0f} img/s"),
        ("end_to_end_img_s", "end to end", "{:.0f} img/s"),
        ("data_wait_frac", "data wait", "{:.1%}"),
        ("device_wait_frac", "device idle for data", "{:.1%}"),
        ("end_to_end_best_vs_default", "best loader vs default", "{:.2f}"),
        ("profile.heaviest", "heaviest op", "{}"),
        ("lrn.auto_vs_pool", "LRN default vs pool", "{:.2f}"),
        ("lrn.share_of_step", "LRN share of step", "{:.0%}"),
        ("host_sync.trainer_vs_no_sync", "sync ratio", "{:.2f}"),
        ("tf32.tf32_vs_plain", "tf32 vs plain", "{:.2f}"),
        ("fused_sgd.fused_vs_plain", "fused SGD vs plain", "{:.2f}"),
    ],
    "paper_init": [
        ("steps", "steps", "{}"),
        ("first_loss", "loss from", "{:.3f}"),
        ("last_loss", "to", "{:.3f}"),
        ("chance_loss", "chance", "{:.3f}"),
        ("left_chance_step", "left chance at step", "{}"),
    ],
}


def _get(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def headline(name: str, rec: dict) -> str:
    parts = [f"{label} {fmt.format(v)}" for key, label, fmt in HEADLINES[name] if (v := _get(rec, key)) is not None]
    if rec.get("error"):
        parts.append(rec["error"])
    return "; ".join(parts)


def table(report: dict) -> str:
    """check.md: the machine, then one row per stage."""
    m = report["machine"]
    what = m.get("gpu") or f"{m.get('cpu')} ({m.get('cores')} cores)"
    lines = [
        f"# alexnet check: {what}, {m.get('date')}",
        "",
        f"size {report['size']}, device {report['device']}, budget {report['budget_s']:.0f} s; torch "
        f"{m.get('torch')}, DALI {m.get('dali')}, Python {m.get('python')}, {m.get('cores')} cores"
        + (f", driver {m.get('driver')}, CUDA {m.get('cuda')}" if m.get("gpu") else ""),
        "",
        "| stage | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, rec in report["stages"].items():
        lines.append(f"| {name} | {rec['status']} | {rec['seconds']:.1f} | {headline(name, rec)} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, report: dict) -> None:
    atomic_write(out / "check.json", json.dumps(report, indent=1) + "\n")
    atomic_write(out / "check.md", table(report))


def run_check(
    out: str | os.PathLike,
    *,
    device: str = "auto",
    size: str | CheckSize = "tiny",
    budget_s: float = 450.0,
    work: str | os.PathLike | None = None,
    stages: tuple[str, ...] = STAGES,
    tests: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs the stages (all of them, in STAGES order; those not in `stages` are recorded as skipped) and returns
    the report also written to OUT/check.json and OUT/check.md.

    work: where the data is made (reused when it holds this size's data); None: a temporary folder, removed at
        the end. tests: the tests stage's pytest arguments; None: `-m gpu` on a GPU, QUICK_TESTS on the CPU."""
    from alexmodel.config import resolve_device

    if budget_s <= 0:
        raise ConfigError(f"budget_s={budget_s}: expected seconds > 0")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}: expected some of {', '.join(STAGES)}")
    device = resolve_device(device)
    size_name = size if isinstance(size, str) else "custom"
    if isinstance(size, str):
        if size not in SIZES:
            raise ConfigError(f"size={size!r}: expected one of {', '.join(SIZES)}")
        size = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = work is None
    work = Path(tempfile.mkdtemp(prefix="alexnet-check-")) if tmp else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cores = host.cores()
    tests = tuple(tests) if tests is not None else (GPU_TESTS if device == "gpu" else QUICK_TESTS)
    ctx = Context(device=device, size=size, work=work, cores=cores, tests=tests)
    machine = machine_info(device)
    report = {
        "machine": machine,
        "result_name": result_name(machine, size_name),
        "size": size_name,
        "sizes": asdict(size),
        "device": device,
        "budget_s": budget_s,
        "stages": {},
    }
    t_end = time.perf_counter() + budget_s
    try:
        for i, name in enumerate(STAGES):
            t0 = time.perf_counter()
            later = [n for n in STAGES[i:] if n in stages]
            ctx.deadline = t0 + (t_end - t0) * WEIGHTS[name] / sum(WEIGHTS[n] for n in later) if later else t0
            fig: dict = {}
            status, error = "ok", None
            try:
                if name == "data" and name not in stages and finished_data(work):
                    ctx.data = work / "data"  # an earlier check's data, for a rerun of some stages
                    raise StageSkipped(f"not among --stages; using the data already in {ctx.data}")
                if name not in stages:
                    raise StageSkipped("not among --stages")
                if t_end - t0 <= 0:
                    raise StageSkipped(f"no time left of the {budget_s:.0f} s budget")
                STAGE_FNS[name](ctx, fig)
            except StageSkipped as e:
                status, error = "skipped", str(e)
            except StageTimeout as e:
                status, error = "timeout", str(e)
            except KeyboardInterrupt:
                report["stages"][name] = {
                    "status": "failed",
                    "seconds": time.perf_counter() - t0,
                    "error": "interrupted",
                    **fig,
                }
                raise
            except Exception as e:  # one stage's failure must not stop the others
                status, error = "failed", one_line(e)
            rec = {
                "status": status,
                "seconds": round(time.perf_counter() - t0, 2),
                **({"error": error} if error else {}),
                **fig,
            }
            if name in stages:
                rec["time_box_s"] = round(ctx.deadline - t0, 3)
            report["stages"][name] = rec
            _write(out, report)
            log(f"check {name}: {status} in {rec['seconds']:.1f} s; {headline(name, rec)}")
    finally:
        _write(out, report)
        if tmp:
            shutil.rmtree(work, ignore_errors=True)
    log("")
    log(table(report))
    return report
