"""`alexnet`: the command line. Each command is a thin wrapper over a library function; heavy imports
(DALI, torch) happen inside the command that needs them so `alexnet --help` stays instant."""
from __future__ import annotations

import sys

import click


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fast ImageNet training of the 2012 AlexNet on NVIDIA DALI input pipelines.

    Workflow: prepare (raw ImageNet -> shards) -> stats -> train -> evaluate. `alexnet demo` runs them all on a
    generated mini-ImageNet."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", default=10, show_default=True, help="Number of classes.")
@click.option("--train-per-class", default=100, show_default=True, help="Training images per class.")
@click.option("--val-per-class", default=10, show_default=True, help="Validation images per class.")
@click.option("--seed", default=0, show_default=True)
@click.option("--oddities/--no-oddities", default=True, show_default=True,
              help="Plant ImageNet's bad files: CMYK, grayscale, PNG-as-JPEG, truncated, empty.")
@click.option("--layout", type=click.Choice(["tree", "archives"]), default="tree", show_default=True,
              help="Extracted folders, or the distributed ILSVRC2012_img_{train,val}.tar archives.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
def synth(out, classes, train_per_class, val_per_class, seed, oddities, layout, workers):
    """Generate a mini-ImageNet in the original layout under OUT."""
    from alexdata.synth import SynthConfig, make_synth

    try:
        cfg = SynthConfig(classes, train_per_class, val_per_class, seed, oddities, layout)
    except ValueError as e:
        _fail(e)
    d = make_synth(out, cfg, workers=workers)
    click.echo(f"synth: {d['train_images']} train + {d['val_images']} val images of {len(d['classes'])} classes "
               f"({layout}, mean {d['mean_jpeg_bytes'] // 1000} KB) -> {out}")


@main.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--quality", default=90, show_default=True, help="JPEG quality of the re-encoded images.")
@click.option("--shorter-side", default=256, show_default=True, help="Resize so the shorter side is this long.")
@click.option("--shard-size", default=1024, show_default=True, help="Images per shard.")
@click.option("--seed", default=0, show_default=True, help="Seed of the training samples' order across shards.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
@click.option("--part", default=None, metavar="I/N",
              help="Write only part I of N (0-based): N machines write disjoint shards into one OUT.")
def prepare(src, out, quality, shorter_side, shard_size, seed, workers, part):
    """Resize raw ImageNet at SRC (extracted tree or the original tars) into webdataset shards at OUT.

    Resumable: run the same command again after an interruption and only missing shards are written."""
    from alexdata.prepare import PrepareConfig, PrepareError, prepare as run

    try:
        run(src, out, PrepareConfig(shorter_side, quality, shard_size, seed), workers=workers, part=part,
            log=click.echo)
    except PrepareError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo("\nprepare: interrupted; run the same command again to resume (finished shards are kept)",
                   err=True)
        sys.exit(130)


@main.group()
def bench() -> None:
    """Benchmarks: side-by-side ratios measured in one run (figures go to docs/BENCHMARKS.md)."""


def _report(result: dict, as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps(result))
    else:
        for k, v in result.items():
            click.echo(f"{k:>24}: {v:.1f}" if isinstance(v, float) else f"{k:>24}: {v}")


@bench.command("prepare")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--images", default=300, show_default=True, help="Training images to time (held in memory).")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds; the median is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_prepare(src, images, rounds, as_json):
    """Per-core images/s of prepare's resize (DCT-domain draft) vs a plain PIL loop on SRC's images."""
    from alexdata.bench import bench_prepare as run
    from alexdata.prepare import PrepareError

    try:
        _report(run(src, images, rounds), as_json)
    except PrepareError as e:
        _fail(e)


@bench.command("loader")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--seconds", default=10.0, show_default=True, help="Timed seconds per contender (after warm-up).")
@click.option("--threads", type=int, default=None, help="DALI threads = DataLoader workers (default: all cores).")
@click.option("--stats", type=click.Path(dir_okay=False), default=None, help="Default: DATA/stats.json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_loader(data, device, batch_size, seconds, threads, stats, as_json):
    """Images/s of DALI decode only, the train pipeline, and a torch DataLoader + PIL baseline, side by side."""
    from alexdata.bench import bench_loader as run
    from alexdata.dataset import DataError

    try:
        _report(run(data, device, batch_size, seconds, threads, stats), as_json)
    except (DataError, ValueError) as e:
        _fail(e)


if __name__ == "__main__":
    main()
