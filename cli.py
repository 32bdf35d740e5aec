"""`alexnet`: the command line. Each command parses its options, makes one library call and prints; heavy
imports (DALI, torch) happen inside the command that needs them so `alexnet --help` stays instant.

A user's mistake (a UserError: bad options, data, files or state; or the system refusing a file, an OSError) is
caught once, in `_Commands.invoke`, and printed as one line `Error: ...` with exit status 1. Anything else is a
bug and keeps its traceback."""

from __future__ import annotations

import sys
from concurrent.futures.process import BrokenProcessPool

import click

from alexdata.errors import StatsMissing, UserError, os_error_line, plural
from alexmodel.config import DataConfig, OptimConfig, RunConfig
from pipelines.config import Tuning

POS_INT = click.IntRange(min=1)  # counts: workers, images, batch sizes, steps ...
POS_FLOAT = click.FloatRange(min=0, min_open=True)


def config_options(cls, skip: tuple[str, ...] = ()):
    """A decorator adding one option per field of the config dataclass `cls` (but `skip`), made from the field:
    its name (`--log-every`; a bool `--x/--no-x`, so a resume can turn it either way, `--no-x` renamed by
    metadata "off"), type, default and, in its metadata (alexmodel/config.py `_opt`), the help text, choices,
    range ("min", "max", "min_open", "max_open") and the default as said where a recipe sets it ("shown"). A
    setting is declared once, at its field; a new field needs no edit here. Values arrive in the command's
    keyword arguments by field name; the config's own checks give the one-line errors."""
    from dataclasses import fields

    def add(command):
        for f in reversed([f for f in fields(cls) if f.name not in skip]):
            meta, name = f.metadata, f.metadata.get("option", f.name).replace("_", "-")
            kind = meta.get("type", type(f.default))
            off = meta.get("off", f"no-{name}")  # a bool's other spelling
            if kind is bool:
                decl, kw = f"--{name}/--{off}", {}
            elif "choices" in meta:
                decl, kw = f"--{name}", {"type": click.Choice(meta["choices"])}
            elif "min" in meta or "max" in meta:
                bounds = {k: meta[k] for k in ("min", "max", "min_open", "max_open") if k in meta}
                decl, kw = f"--{name}", {"type": (click.IntRange if kind is int else click.FloatRange)(**bounds)}
            else:
                decl, kw = f"--{name}", {"type": kind}
            said = meta.get("shown") or ("" if f.default is None else _shown(f.default, name, off))
            text = meta["help"] + (f" [default: {said}]" if said else "")
            command = click.option(decl, f.name, default=f.default, help=text, **kw)(command)
        return command

    return add


def _shown(value, name: str, off: str) -> str:
    """A default as the help text says it: 1,000,000; 0.65; --tf32 or --no-compile for a bool option."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--{off}"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)


# --device of every command but train's (a RunConfig field) and check's: where the work runs
device_option = click.option(
    "--device", type=click.Choice(["cpu", "gpu"]), default=None, help="[default: gpu if torch sees CUDA, else cpu]"
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


tuning_options = config_options(Tuning)  # `--prefetch`, `--hw-decoder-load`, ...: DALI's speed knobs


class _Commands(click.Group):
    """The command group that turns a user's error into its one line (subgroups pass theirs up to it)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StatsMissing as e:  # the library names the file; pointing at another one is this command line's
            raise click.ClickException(f"{e}, or pass --stats FILE") from None
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # the file whole, what the system said, and for a full disk what to do
            raise click.ClickException(os_error_line(e)) from None
        except BrokenProcessPool:  # synth's or verify's worker killed (the out-of-memory killer, say)
            raise click.ClickException(
                "a worker process died (killed: out of memory? see `dmesg`); run the command again, with fewer "
                "--workers if memory is short"
            ) from None
        except ModuleNotFoundError as e:  # a broken install: name the package, not a traceback per worker
            raise click.ClickException(
                f"{e.name or e}: not installed in this Python ({sys.executable}); pip install -e . installs it"
            ) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alexnet-dali", prog_name="alexnet")
def main() -> None:
    """Fast ImageNet training of the 2012 AlexNet on NVIDIA DALI input pipelines.

    Workflow: prepare (raw ImageNet -> shards) -> stats -> train -> evaluate. `alexnet demo` runs them all on a
    generated mini-ImageNet."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", type=POS_INT, default=10, show_default=True, help="Number of classes.")
@click.option("--train-per-class", type=POS_INT, default=100, show_default=True, help="Training images per class.")
@click.option(
    "--val-per-class", type=click.IntRange(min=0), default=10, show_default=True, help="Validation images per class."
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--oddities/--no-oddities",
    default=True,
    show_default=True,
    help="Plant ImageNet's bad files: CMYK, grayscale, PNG-as-JPEG, truncated, empty.",
)
@click.option(
    "--layout",
    type=click.Choice(["tree", "archives", "kaggle", "hf"]),
    default="tree",
    show_default=True,
    help="tree: extracted train/ and val/ with the Kaggle CSV; archives: image-net.org's "
    "ILSVRC2012_img_{train,val}.tar with the devkit; kaggle: the Kaggle download (ILSVRC/Data/CLS-LOC); "
    "hf: the Hugging Face repository (data/*.tar.gz).",
)
@click.option("--workers", type=POS_INT, default=None, help="Processes (default: all cores).")
@click.option(
    "--shards",
    is_flag=True,
    help="Throughput data instead: write prepare's output (shards, manifest.json, a stats.json of ImageNet's "
    "published statistics) directly from 512 random textures, in seconds (alexdata/textures.py).",
)
def synth(out, classes, train_per_class, val_per_class, seed, oddities, layout, workers, shards):
    """Generate a mini-ImageNet in the original layout under OUT (or, with --shards, prepare's output)."""
    if shards:
        from alexdata.textures import make_throughput_data

        m = make_throughput_data(
            out,
            classes=classes,
            train_images=classes * train_per_class,
            val_images=classes * val_per_class,
            seed=seed,
            distinct=max(512, classes),
        )
        click.echo(
            f"synth: {m['train']['images']} train + {m['val']['images']} val samples of "
            f"{plural(classes, 'class', 'classes')} (shards, mean {m['mean_jpeg_bytes'] / 1000:.0f} KB) -> {out}"
        )
        return
    from alexdata.synth import SynthConfig, make_synth

    d = make_synth(out, SynthConfig(classes, train_per_class, val_per_class, seed, oddities, layout), workers=workers)
    click.echo(
        f"synth: {d['train_images']} train + {d['val_images']} val images of "
        f"{plural(len(d['classes']), 'class', 'classes')} ({layout}, mean {d['mean_jpeg_bytes'] // 1000} KB) -> {out}"
    )


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--quality",
    type=click.IntRange(1, 100),
    default=90,
    show_default=True,
    help="JPEG quality of the re-encoded images.",
)
@click.option("--shorter-side", default=256, show_default=True, help="Resize so the shorter side is this long.")
@click.option("--shard-size", type=POS_INT, default=1024, show_default=True, help="Images per shard.")
@click.option("--seed", default=0, show_default=True, help="Seed of the training samples' order across shards.")
@click.option("--workers", type=POS_INT, default=None, help="Processes (default: all cores).")
@click.option(
    "--part",
    default=None,
    metavar="I/N",
    help="Write only part I of N (0-based): N machines write disjoint shards into one OUT.",
)
@click.option(
    "--val-labels",
    type=click.Path(),
    default=None,
    help="Val labels, overriding discovery: a Kaggle LOC_val_solution.csv, the devkit (.tar.gz or its "
    "folder), or plain '<stem> <wnid>' lines.",
)
def prepare(src, out, quality, shorter_side, shard_size, seed, workers, part, val_labels):
    """Resize raw ImageNet at SRC into webdataset shards at OUT.

    SRC is any of: image-net.org's archives (ILSVRC2012_img_{train,val}.tar, read in place) or their extracted
    train/ and val/; Kaggle's download (ILSVRC/Data/CLS-LOC); the Hugging Face repository (data/*.tar.gz, read
    in place). Val labels: --val-labels, else LOC_val_solution.csv (Kaggle), the devkit
    ILSVRC2012_devkit_t12.tar.gz (or extracted), or val class folders. Unlabelled test images are left out.
    Resumable: run the same command again after an interruption and only missing shards are written."""
    from alexdata.prepare import PrepareConfig
    from alexdata.prepare import prepare as run

    try:
        run(
            src,
            out,
            PrepareConfig(shorter_side, quality, shard_size, seed),
            workers=workers,
            part=part,
            log=click.echo,
            val_labels=val_labels,
        )
    except KeyboardInterrupt:
        click.echo("\nprepare: interrupted; run the same command again to resume (finished shards are kept)", err=True)
        sys.exit(130)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--quick", is_flag=True, help="Presence and sizes only (seconds); the default also checks sha256.")
@click.option("--workers", type=POS_INT, default=None, help="Hashing processes (default: all cores).")
def verify(data, quick, workers):
    """Check a prepare output's shards against manifest.json (e.g. after copying them to a node).

    Prints one line per missing, truncated or damaged file and exits 1 when there is any."""
    import time

    from alexdata.verify import verify as run

    t0 = time.perf_counter()
    r = run(data, quick=quick, workers=workers, progress=True)
    for line in r["problems"]:
        click.echo(line)
    dt = time.perf_counter() - t0
    what = (
        f"sizes of {plural(r['files'], 'file')}"
        if quick or not r["hashed"]
        else f"sha256 of {plural(r['files'], 'file')} ({r['bytes'] / 1e9:.2f} GB, {r['bytes'] / 1e6 / dt:.0f} MB/s)"
    )
    click.echo(f"verify: {plural(len(r['problems']), 'bad file')}; checked {what} in {dt:.1f} s")
    sys.exit(1 if r["problems"] else 0)


@main.group()
def bench() -> None:
    """Benchmarks: side-by-side ratios measured in one run (figures go to docs/BENCHMARKS.md)."""


def _unit(key: str) -> str:
    """The unit a benchmark figure is in, from its name."""
    k = key.lower()
    if k.endswith(("_frac", "_pct")) or k == "ratio_pct":
        return "%"
    if k in ("decode_only", "pipeline", "baseline", "default_img_s") or k.endswith(("per_s", "img_s", "per_core")):
        return "img/s"
    if k.startswith("pipeline_echo") and k[len("pipeline_echo") :].isdigit():
        return "img/s"
    if k.endswith("_kb"):
        return "KB"
    if k.endswith("us_per_img"):
        return "us/img"
    if k in ("seconds", "epoch_s") or k.endswith("_s"):
        return "s"
    return ""


def _fmt(key: str, v) -> str:
    unit = _unit(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if unit == "%":
        return f"{100 * v:.1f} %" if key.endswith("_frac") else f"{v:.1f} %"
    if isinstance(v, float):
        text = f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"  # 0.125 stays 0.125, 2345.6 reads 2,345.6
        return f"{text} {unit}".rstrip()
    return f"{v} {unit}".rstrip()


def _table(result, indent: int = 0) -> list[str]:
    """A benchmark's result as aligned `name: value unit` lines; nested records indented under their name."""
    pad = " " * indent
    lines = []
    items = result.items() if isinstance(result, dict) else enumerate(result)
    width = max((len(str(k)) for k, _ in (result.items() if isinstance(result, dict) else [])), default=0)
    for k, v in items:
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            lines.append(f"{pad}{k}:")
            lines += _table(v, indent + 2)
        elif isinstance(v, list):
            lines.append(f"{pad}{str(k):<{width}}  " + ", ".join(_fmt(str(k), x) for x in v))
        else:
            lines.append(f"{pad}{str(k):<{width}}  {_fmt(str(k), v)}")
    return lines


def _report(result: dict, as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo("\n".join(_table(result)))


@bench.command("bytes")
@click.option("--batch-size", type=POS_INT, default=256, show_default=True, help="The batch to extrapolate to.")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--width", type=POS_FLOAT, default=1.0, show_default=True, help="Model width (1.0: the paper's net).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def bench_bytes(batch_size, precision, width, as_json):
    """Bytes one training step reads and writes (every aten op traced on the CPU; holds on a GPU), for each LRN
    implementation, NCHW and channels_last side by side."""
    import dataclasses

    from alexmodel.tools.traffic import step_bytes

    # "triton" is left out: its kernels are not aten operators (by construction they move 10 bytes per bf16
    # element, alexmodel/lrn_triton.py); "auto" is "analytic" on the CPU
    for lrn in ("analytic", "pool", "identity"):
        for cl in (False, True):
            r = dataclasses.asdict(
                step_bytes(batch_size=batch_size, channels_last=cl, lrn=lrn, precision=precision, width=width)
            )
            if as_json:
                _report(r, True)
            else:
                fmt = "channels_last" if cl else "NCHW"
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["top_ops_gb"].items())[:4])
                click.echo(
                    f"lrn {lrn:<8} {fmt:<13} {r['total_gb']:6.2f} GB a step at batch {batch_size}  (top GB: {top})"
                )


@bench.command("prepare")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--images", type=POS_INT, default=300, show_default=True, help="Training images to time (held in memory)."
)
@click.option(
    "--rounds", type=POS_INT, default=3, show_default=True, help="Alternating rounds; the median is reported."
)
@json_option
def bench_prepare(src, images, rounds, as_json):
    """Per-core images/s of prepare's resize (DCT-domain draft) vs a plain PIL loop on SRC's images."""
    from alexdata.bench import bench_prepare as run

    _report(run(src, images, rounds), as_json)


class _IntList(click.ParamType):
    """Comma-separated ints >= 1: `--echo 1,2`."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            out = ()
        if not out or min(out) < 1 or len(set(out)) != len(out):
            self.fail(f"{value!r}: expected distinct ints >= 1 separated by commas, e.g. 1,2", param, ctx)
        return out


@bench.command("loader")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@device_option
@click.option("--batch-size", type=POS_INT, default=128, show_default=True)
@click.option(
    "--seconds",
    type=POS_FLOAT,
    default=10.0,
    show_default=True,
    help="Timed seconds per contender and round. The run takes 3 contenders x --rounds x this (90 s by default), "
    "plus the warm-up batches before each timing (3 for DALI, 3 + 2 x threads for the DataLoader) and building "
    "the pipelines once.",
)
@click.option("--rounds", type=POS_INT, default=3, show_default=True, help="Interleaved rounds; medians are reported.")
@click.option("--threads", type=POS_INT, default=None, help="DALI threads = DataLoader workers (default: all cores).")
@tuning_options
@click.option(
    "--echo",
    "echoes",
    type=_IntList(),
    default="1",
    show_default=True,
    help="Data echoing: the pipeline with each of these copies per decoded image, side by side (e.g. 1,2).",
)
@click.option(
    "--augment",
    type=click.Choice(["paper", "inception"]),
    default="paper",
    show_default=True,
    help="paper: random crops of the 256 image (§4.1); inception: torchvision's RandomResizedCrop.",
)
@click.option("--crop", type=POS_INT, default=None, help="Output size in pixels, square [default: 227].")
@click.option("--stats", type=click.Path(dir_okay=False), default=None, help="Default: DATA/stats.json.")
@json_option
def bench_loader(data, device, batch_size, seconds, threads, echoes, augment, crop, stats, rounds, as_json, **knobs):
    """Images/s of DALI decode only, the train pipeline, and a torch DataLoader + PIL baseline, side by side."""
    from alexdata.bench import bench_loader as run

    _report(
        run(
            data,
            device,
            batch_size,
            seconds,
            threads,
            stats,
            rounds,
            tuning=knobs,
            echoes=echoes,
            aug={"augment": augment, **({"crop": crop} if crop else {})},
        ),
        as_json,
    )


@main.command()
@click.argument("data", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Output file [default: DATA/stats.json].")
@click.option(
    "--max-images", type=POS_INT, default=None, help="Sum a seeded uniform sample of N training images [default: all]."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the --max-images sample.")
@device_option
@click.option("--batch-size", type=POS_INT, default=64, show_default=True)
@click.option(
    "--threads", type=POS_INT, default=None, help="DALI threads, and summing threads on cpu [default: all cores]."
)
@click.option("--force", is_flag=True, help="Replace an existing stats file that holds other statistics.")
def stats(data, out, max_images, seed, device, batch_size, threads, force):
    """RGB mean, std and covariance eigenvectors of DATA's training images (0-255 scale) -> DATA/stats.json, and
    the mean image of their central 256x256 patches -> DATA/stats.mean_image.npy.

    DATA is a `prepare` output or a raw class-folder tree (DATA/train/<wnid>/* or DATA/<wnid>/*). The pipelines
    read the files for mean subtraction (per channel, or per pixel: paper §2) and PCA colour noise (§4.1)."""
    from pathlib import Path

    from alexdata import host
    from alexdata.stats import compute_stats, summary
    from alexdata.statsfile import same_stats, write_stats

    rec = compute_stats(
        data,
        max_images=max_images,
        seed=seed,
        device=device or host.default_device(),
        batch_size=batch_size,
        threads=threads,
        progress=True,
    )
    path = Path(out or Path(data) / "stats.json")
    kept = None
    if path.is_file() and not force and not same_stats(path, rec):
        # Runs trained on the old file keep using it (their checkpoints hold it); do not swap it under them.
        kept, path = path, path.with_name(path.stem + ".new.json")
    path = write_stats(rec, path)
    click.echo(summary(rec, path))
    if kept:
        click.echo(
            f"stats: {kept} holds other statistics and was kept; wrote {path} instead (--force replaces {kept})",
            err=True,
        )


@bench.command("stats")
@click.argument("data", type=click.Path())
@device_option
@click.option("--batch-size", type=POS_INT, default=64, show_default=True)
@click.option(
    "--threads", type=POS_INT, default=None, help="DALI threads, and summing threads on cpu [default: all cores]."
)
@click.option("--max-images", type=POS_INT, default=None, help="Time a seeded sample of N images [default: all].")
@click.option(
    "--rounds", type=POS_INT, default=3, show_default=True, help="Alternating rounds; the median is reported."
)
@json_option
def bench_stats(data, device, batch_size, threads, max_images, rounds, as_json):
    """Images/s of DALI decode alone vs the stats pass (same reader, decoder, images and threads), and the ratio."""
    from alexdata.bench import bench_stats as run

    _report(run(data, device, batch_size, threads, max_images, rounds), as_json)


class _ResumeValue(click.ParamType):
    """`--resume` alone, or `--resume auto`: a value that is neither is most likely DATA written after it."""

    name = "[auto]"

    def convert(self, value, param, ctx):
        if value in ("yes", "auto"):
            return value
        self.fail(f"takes no value or 'auto', got {value!r}: put DATA before --resume", param, ctx)


@main.command()
@click.argument("data", type=click.Path())
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/alexnet",
    show_default=True,
    help="Run directory: config.json, metrics.jsonl, plot.png, checkpoint.pt.",
)
@click.option(
    "--resume",
    type=_ResumeValue(),
    is_flag=False,
    flag_value="yes",
    default=None,
    help="Continue the run in --out exactly where its checkpoint stopped; options not given are the run's. "
    "`--resume auto`: continue when --out holds a checkpoint, else start (for requeued jobs).",
)
@click.option(
    "--config",
    type=click.Path(),
    default=None,
    help="Start from a run's config.json (or its run directory), or a recipe file of that shape with any of its "
    "fields; the options given here go on top. DATA and --out stay this command's.",
)
@click.option(
    "--augment",
    type=click.Choice(["paper", "inception"]),
    default=None,
    help="Training crops. paper: random 227 crops of the 256 image (§4.1). inception: torchvision's "
    "RandomResizedCrop to AlexNet's 227, evaluated at shorter side 259 [default: paper].",
)
@config_options(OptimConfig)
@click.option(
    "--width",
    type=float,
    default=1.0,
    show_default=True,
    help="Channel multiplier; 1.0 is the paper's net, 0.125 makes a CPU-sized one.",
)
@click.option("--stats", type=click.Path(dir_okay=False), default=None, help="[default: DATA/stats.json]")
@config_options(DataConfig, skip=("data", "stats", "aug", "tuning"))
@tuning_options
@config_options(RunConfig, skip=("out",))
@click.pass_context
def train(ctx, data, out, resume, **options):
    """Train AlexNet on DATA; data parallel under torchrun.

    DATA is a `prepare` output with stats.json, or a raw class-folder tree (DATA/train/<wnid>/*, DATA/val/<wnid>/*;
    slower: every image is resized on the fly) with DATA/stats.json or --stats.

    Per epoch it logs train loss and top-1, val top-1/top-5 (centre crop), lr, images/s and the fraction of step
    time spent waiting for data, to OUT/metrics.jsonl and OUT/plot.png; every --log-every steps a line to
    OUT/steps.jsonl. SIGTERM, SIGUSR1 or Ctrl-C stops after the current step with an exact checkpoint (exit
    status 75); a second one exits at once."""
    import shlex

    from alexmodel import runlog
    from alexmodel.distributed import STOPPED_EXIT, TrainStopped, end_on_signal, launcher
    from alexmodel.train import train_from_options

    # The options given on this command line, by config field name; a resume keeps the run's own value of
    # every other one.
    given = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    # the command that continues the run, under the launcher that started it (torchrun: as many ranks)
    again = shlex.join([*(launcher(sys.argv[0]) or ["alexnet"]), "train", data, "--out", out, "--resume"])
    try:
        result = train_from_options(data, out, resume={"yes": True, "auto": "auto", None: False}[resume], **given)
    except TrainStopped as e:
        end_on_signal(STOPPED_EXIT)  # the checkpoint is written: another signal while DALI shuts down ends it at once
        if e.rank == 0:
            click.echo(f"train: {e}; continue with: {again}", err=True)
        sys.exit(STOPPED_EXIT)
    except KeyboardInterrupt:  # before training started (the trainer handles signals once it runs)
        click.echo(f"\ntrain: interrupted; continue with: {again}", err=True)
        sys.exit(130)
    if result["rank"] == 0:
        h = result["history"]
        last = (
            f"epoch {h[-1]['epoch']}: val top-1 {100 * h[-1]['val_top1']:.1f}%, top-5 {100 * h[-1]['val_top5']:.1f}%; "
            if h and h[-1]["val_top1"] is not None
            else f"epoch {h[-1]['epoch']}: train top-1 {100 * h[-1]['train_top1']:.1f}% (no val split); "
            if h
            else ""
        )
        click.echo(
            f"train: {last}metrics {out}/{runlog.METRICS}, plot {out}/{runlog.PLOT}, checkpoint {result['checkpoint']}"
        )


@main.command()
@click.argument("data", type=click.Path())
@click.option(
    "--checkpoint",
    type=click.Path(),
    default="runs/alexnet",
    show_default=True,
    help="A checkpoint.pt of `alexnet train`, or its run directory (train's --out).",
)
@click.option(
    "--ten-crop",
    is_flag=True,
    help="Average the softmax over ten views: four corners and centre, and their mirrors (paper §4.1).",
)
@json_option
@device_option
@click.option(
    "--batch-size", type=POS_INT, default=128, show_default=True, help="Images per batch (ten-crop: 10 views each)."
)
@click.option("--threads", type=POS_INT, default=None, help="DALI threads [default: all cores].")
@click.option(
    "--stats",
    type=click.Path(dir_okay=False),
    default=None,
    help="[default: the statistics the run trained with, kept in the checkpoint]",
)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
def evaluate(data, checkpoint, ten_crop, as_json, device, batch_size, threads, stats, precision):
    """Top-1/top-5 of a checkpoint on DATA's val split (centre crop, or --ten-crop)."""
    import json

    from alexmodel.evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(
        data,
        checkpoint,
        ten_crop=ten_crop,
        device=device or "auto",
        batch_size=batch_size,
        threads=threads,
        stats=stats,
        precision=precision,
    )
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(
            f"evaluate: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  on {r['images']} val "
            f"images ({'ten-crop' if ten_crop else 'centre crop'}; {checkpoint}, epoch {r['epoch']})"
        )


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--checkpoint",
    type=click.Path(),
    default="runs/alexnet",
    show_default=True,
    help="A checkpoint.pt, or its run directory (train's --out).",
)
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the ten views, as evaluate does.")
@click.option("--top", type=POS_INT, default=5, show_default=True, help="Classes listed per image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image and line.")
@device_option
@click.option("--batch-size", type=POS_INT, default=64, show_default=True)
@click.option("--threads", type=POS_INT, default=None, help="DALI threads [default: all cores].")
def predict(images, checkpoint, ten_crop, top, as_json, device, batch_size, threads):
    """The most likely classes of IMAGES (JPEG/PNG files, or directories of them, read recursively) under a
    trained checkpoint: `wnid (name) probability`, the name where prepare found the class names.

    The evaluation preprocessing: shorter side 256, the centre 227 crop (or --ten-crop), minus the run's mean.
    A file that cannot be read gives one line on stderr, the others their classes; the exit status is then 1."""
    import json

    from alexmodel.predict import predict as run

    results = run(
        checkpoint,
        list(images),
        ten_crop=ten_crop,
        device=device or "auto",
        batch_size=batch_size,
        threads=threads,
        top=top,
    )
    for r in results:
        if "error" in r:
            click.echo(f"predict: {r['image']}: {r['error']}", err=True)
        elif as_json:
            top = [{"class": c, "name": n, "probability": p} for (c, p), n in zip(r["top"], r["names"])]
            click.echo(json.dumps({"image": r["image"], "top": top}))
        else:
            click.echo(
                f"{r['image']}: "
                + ", ".join(f"{c}{f' ({n})' if n else ''} {100 * p:.1f}%" for (c, p), n in zip(r["top"], r["names"]))
            )
    sys.exit(1 if any("error" in r for r in results) else 0)


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo",
    show_default=True,
    help="Directory for raw/, data/ and run/; finished stages are reused.",
)
@device_option
@click.option(
    "--epochs",
    type=POS_INT,
    default=None,
    help="Training epochs; more than a finished demo's continue its run [default: 10].",
)
def demo(out, device, epochs):
    """synth -> prepare -> stats -> train -> evaluate on a generated 10-class mini-ImageNet (minutes on a CPU)."""
    from dataclasses import replace

    from alexmodel.tools.demo import DemoConfig, run_demo

    cfg = DemoConfig() if epochs is None else replace(DemoConfig(), epochs=epochs)
    r = run_demo(out, cfg, device=device or "auto", log=click.echo)
    click.echo(
        f"demo: val top-1 {100 * r['val_top1']:.1f}% (ten-crop {100 * r['ten_crop_top1']:.1f}%), top-5 "
        f"{100 * r['val_top5']:.1f}% on {r['val_images']} images; {r['total_s'] / 60:.1f} min on {r['device']} "
        f"(synth {r['synth_s']:.0f} s, prepare {r['prepare_s']:.0f} s, stats {r['stats_s']:.0f} s, "
        f"train {r['train_s']:.0f} s, evaluate {r['evaluate_s']:.0f} s)"
    )
    click.echo(f"demo: metrics {r['metrics']}")
    click.echo(f"demo: plot    {r['plot']}")


@bench.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False), required=False)
@device_option
@click.option(
    "--steps", type=POS_INT, default=20, show_default=True, help="Timed optimizer steps per variant (after warm-up)."
)
@click.option("--batch-size", type=POS_INT, default=128, show_default=True)
@click.option("--width", default=1.0, show_default=True, help="Model width (1.0 = the paper's net).")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp32", "bf16", "fp16"]),
    help="Precisions to sweep [default: fp32 and bf16].",
)
@click.option("--threads", type=POS_INT, default=None, help="DALI threads for the end-to-end run.")
@click.option("--stats", type=click.Path(dir_okay=False), default=None, help="Default: DATA/stats.json.")
@click.option("--no-sweep", is_flag=True, help="Only the bf16 channels_last single-device variant.")
@json_option
def bench_train(data, device, steps, batch_size, width, precisions, threads, stats, no_sweep, as_json):
    """Training images/s: synthetic tensors on the device (compute bound) vs the real loader (end to end), and
    the placement / precision / channels_last sweep. Without DATA only the synthetic figures."""
    from alexmodel.tools.bench import bench_train as run

    _report(
        run(
            data,
            device or "auto",
            steps,
            batch_size,
            width,
            tuple(precisions) or ("fp32", "bf16"),
            threads,
            stats,
            sweep=not no_sweep,
        ),
        as_json,
    )


@main.command()
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="auto: gpu when torch sees CUDA, else cpu.",
)
@click.option(
    "--size",
    type=click.Choice(["tiny", "full"]),
    default="tiny",
    show_default=True,
    help="tiny: a few hundred images, minutes on a laptop; full: ~20k ImageNet-sized images, for a GPU box.",
)
@click.option(
    "--budget-s",
    type=POS_FLOAT,
    default=450.0,
    show_default=True,
    help="Seconds for all stages together; each stage is time-boxed to its share of what is left.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="check",
    show_default=True,
    help="Where check.json and check.md go (rewritten after every stage).",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the generated data goes, and is reused by a later check [default: a temporary folder, "
    "removed at the end].",
)
@click.option(
    "--stages",
    default=",".join(("data", "tests", "loader", "stats", "train", "paper_init")),
    show_default=True,
    help="Comma-separated stages to run; the others are recorded as skipped.",
)
def check(device, size, budget_s, out, work, stages):
    """Does everything work here, and how fast? data, tests, loader, stats, train and paper_init stages.

    Writes OUT/check.json (figures per stage) and OUT/check.md (the table printed at the end). Exits 1 when a
    stage failed. docs/GPU.md is the runbook for a GPU box."""
    import signal

    from alexmodel.tools.check import run_check

    def interrupted(signum, frame):  # `timeout` and batch systems send SIGTERM: keep the stage's partial figures
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run_check(
            out,
            device=device,
            size=size,
            budget_s=budget_s,
            work=work,
            stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
            log=click.echo,
        )
    except KeyboardInterrupt:
        click.echo(f"\ncheck: interrupted; what was measured is in {out}/check.json", err=True)
        sys.exit(130)
    failed = [n for n, r in report["stages"].items() if r["status"] == "failed"]
    click.echo(f"check: {out}/check.json, {out}/check.md" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
