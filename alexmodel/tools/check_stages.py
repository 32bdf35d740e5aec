"""The six stages of `alexnet check` (alexmodel/tools/check.py runs them, each in its time box): each is a
function stage_NAME(ctx, fig) that adds its figures to `fig` as it measures, and raises StageSkipped or
StageTimeout (what it measured so far is kept) or fails with any other exception.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexdata import host
from alexmodel.tools import synth_done
from pipelines.config import Tuning

ROOT = Path(__file__).resolve().parents[2]  # the source checkout: tests/ lives here
QUICK_TESTS = ("tests/test_lrn.py", "-m", "not slow and not gpu")  # the CPU's subset: seconds, no data fixtures
# Every GPU test but the compiled training epoch (the train stage times torch.compile itself, and its several
# minute-long compilations would not fit the stage's box), on four pytest-xdist workers sharing the GPU: one at a
# time, the 13 tests at ~10 s each outran the stage's box on the H200 (docs/BENCHMARKS.md).
GPU_TESTS = ("tests", "-m", "gpu", "--deselect", "tests/test_train.py::test_gpu_epoch[bf16-True-True]", "-n", "4")
# A result line of `pytest -v`: "tests/x.py::t PASSED [ 50%]", or under pytest-xdist "[gw0] [ 50%] PASSED tests/x.py::t"
RESULT_LINE = re.compile(
    r"^(?:(?P<name>\S+::\S+)\s+(?P<what>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b"
    r"|\[gw\d+\] \[\s*\d+%\] (?P<what2>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?P<name2>\S+::\S+))"
)
COLLECTED_LINE = re.compile(r"^(?:collected (\d+) items?|\d+ workers? \[(\d+) items?\])")


@dataclass(frozen=True)
class CheckSize:
    """How much data and work each stage gets."""

    classes: int
    train_per_class: int
    val_per_class: int
    shard_size: int  # images per prepare shard
    width: float  # model width of the train and paper_init stages (1.0: the paper's net)
    batch_size: int  # the loader's default batch and the train stage's batch
    loader_seconds: float  # timed seconds per loader contender and sweep point
    train_steps: int  # timed optimizer steps per synthetic variant (end to end: twice as many)
    paper_init_s: float  # seconds of paper-recipe training
    # "synth": synth -> prepare -> stats, every code path; "textures": prepare's output written directly in
    # seconds (alexdata/textures.py), for throughput where machine time is short
    data: str = "synth"
    repeats: int = 1  # interleaved readings of the loader's best setting and its default, when they differ
    threads: tuple[int, ...] = ()  # loader threads to sweep; () -> half and all of the cores
    batches: tuple[int, ...] = ()  # loader batch sizes to sweep; () -> batch_size and twice it
    prefetch: tuple[int, ...] = (Tuning.prefetch, 3, 4)  # DALI prefetch queue depths to sweep (the default first)
    # The GPU ("mixed") decoder only, the Loader's default first: the hardware decoder's share, and the pixels
    # above which nvJPEG's hybrid Huffman decoder takes an image (0: all of them).
    hw_decoder_load: tuple[float, ...] = (Tuning.hw_decoder_load, 0.0, 0.8, 0.9, 0.95, 1.0)
    hybrid_huffman_threshold: tuple[int, ...] = (Tuning.hybrid_huffman_threshold, 0)


class StageSkipped(Exception):
    """A stage that cannot run here (no data, no budget left): its reason is the stage's one-line error."""


class StageTimeout(Exception):
    """A stage's box ran out between two measurements; what it measured so far is kept."""


@dataclass
class Context:
    """What the stages share: settings, and what earlier stages found (the data, the best loader settings)."""

    device: str  # "cpu" or "gpu"
    size: CheckSize
    work: Path  # raw/ and data/ live here
    cores: int
    tests: tuple[str, ...]  # pytest arguments of the tests stage
    data: Path | None = None  # a prepare output with stats.json, once the data stage has made it
    best_loader: dict = field(default_factory=dict)  # Loader keyword arguments of the fastest setting
    best_train: dict = field(default_factory=dict)  # precision and channels_last of the fastest synthetic run
    deadline: float = math.inf

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check_time(self) -> None:
        if self.left() <= 0:
            raise StageTimeout("its time box ran out")


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def textures_done(data: Path, s: CheckSize) -> bool:
    """Whether `data` holds finished throughput data of this size (`alexnet synth --shards`, in the background
    of an earlier device call, or an earlier check)."""
    from alexdata.shards import load_manifest

    try:
        man = load_manifest(data)
    except Exception:
        return False
    want = (s.classes, s.classes * s.train_per_class, s.classes * s.val_per_class)
    return "textures" in man["params"] and (len(man["classes"]), man["train"]["images"], man["val"]["images"]) == want


def stage_textures(ctx: Context, fig: dict) -> None:
    """The data stage with CheckSize.data "textures": prepare's output written directly (alexdata/textures.py),
    or found finished under ctx.work/data."""
    from alexdata.textures import make_throughput_data

    s, data = ctx.size, ctx.work / "data"
    fig.update(kind="textures", workers=1)
    if textures_done(data, s):
        fig["reused"] = 1
    else:
        shutil.rmtree(ctx.work, ignore_errors=True)
        t = time.perf_counter()
        man = make_throughput_data(
            data, classes=s.classes, train_images=s.classes * s.train_per_class, val_images=s.classes * s.val_per_class
        )
        n = man["train"]["images"] + man["val"]["images"]
        fig.update(reused=0, written_images=n, written_img_s=n / (time.perf_counter() - t))
        fig["mean_kb"] = man["mean_jpeg_bytes"] / 1e3
    man = json.loads((data / "manifest.json").read_text())
    fig.update(train_images=man["train"]["images"], val_images=man["val"]["images"], classes=len(man["classes"]))
    ctx.data = data


def stage_data(ctx: Context, fig: dict) -> None:
    """synth -> prepare -> stats under ctx.work, reusing what an earlier check left there (CheckSize.data
    "synth"), or throughput data written directly ("textures": `stage_textures`)."""
    from alexdata.prepare import PrepareConfig, prepare
    from alexdata.stats import compute_stats
    from alexdata.statsfile import write_stats
    from alexdata.synth import SynthConfig, make_synth

    s = ctx.size
    if s.data == "textures":
        return stage_textures(ctx, fig)
    raw, data = ctx.work / "raw", ctx.work / "data"
    cfg = SynthConfig(s.classes, s.train_per_class, s.val_per_class, seed=0)
    fig["workers"] = ctx.cores
    if synth_done(raw, cfg):
        fig["reused"] = 1
    else:
        shutil.rmtree(ctx.work, ignore_errors=True)  # another size's leftovers
        t = time.perf_counter()
        d = make_synth(raw, cfg, workers=ctx.cores)
        n = d["train_images"] + d["val_images"]
        fig.update(synth_images=n, synth_img_s=n / (time.perf_counter() - t), synth_mean_kb=d["mean_jpeg_bytes"] / 1e3)
        fig["reused"] = 0
    t = time.perf_counter()
    man = prepare(raw, data, PrepareConfig(shard_size=s.shard_size), workers=ctx.cores, log=lambda *a: None)
    if not fig["reused"]:
        n = man["train"]["images"] + man["val"]["images"]
        fig.update(prepare_images=n, prepare_img_s=n / (time.perf_counter() - t))
    fig.update(
        train_images=man["train"]["images"],
        val_images=man["val"]["images"],
        classes=len(man["classes"]),
        skipped=len(man["skipped"]),
    )
    planted = len(json.loads((raw / "synth.json").read_text())["oddities"])
    if len(man["skipped"]) > planted:  # synth plants a few bad files; any more is prepare failing on good ones
        first = man["skipped"][0]
        raise RuntimeError(
            f"prepare skipped {len(man['skipped'])} images, synth planted {planted} oddities; "
            f"first: {first['file']}: {first['reason']}"
        )
    if not (data / "stats.json").is_file():
        try:
            rec = compute_stats(data, device=ctx.device, progress=True)
        except Exception as e:  # every later stage needs stats.json: fall back to the CPU pass, and say so
            if ctx.device == "cpu":
                raise
            fig["stats_error"] = one_line(e)
            rec = compute_stats(data, device="cpu", max_images=2000, progress=True)
        write_stats(rec, data / "stats.json")
        fig["stats_img_s"] = rec["images"] / rec["source"]["seconds"]
        fig["stats_device"] = rec["source"]["device"]
    ctx.data = data


def finished_data(work: Path) -> bool:
    return (work / "data" / "manifest.json").is_file() and (work / "data" / "stats.json").is_file()


def _need_data(ctx: Context) -> str:
    if ctx.data is None:
        raise StageSkipped("needs the data stage's output, which did not finish")
    return str(ctx.data)


def stage_tests(ctx: Context, fig: dict) -> None:
    """pytest in a child process, stopped at the box; results read from its -v lines as they come."""
    import threading

    if not (ROOT / "tests").is_dir():
        raise StageSkipped(f"no tests/ folder beside the package ({ROOT}); run check from a source checkout")
    import importlib.util

    if importlib.util.find_spec("pytest") is None:  # pytest would exit at once, with counts of 0 that read as failures
        raise StageSkipped("pytest is not installed: pip install -e '.[test]'")
    old = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *([old] if old else [])]), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-v", "--tb=line", "-p", "no:cacheprovider", *ctx.tests]
    fig["command"] = " ".join(["pytest", *cmd[3:]])
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failing: list[str] = []
    # A session of its own: at the box, the whole group goes (a grandchild holding the pipe would block the read).
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    bar = host.progress_bar(desc="tests", unit="test", leave=False)
    timed_out = False
    try:

        def kill_at_deadline():
            nonlocal timed_out
            while proc.poll() is None:
                if ctx.left() <= 0:
                    timed_out = True
                    kill()
                    return
                time.sleep(0.2)

        threading.Thread(target=kill_at_deadline, daemon=True).start()
        for line in proc.stdout:
            if m := COLLECTED_LINE.match(line):
                bar.total = int(m.group(1) or m.group(2))
            elif m := RESULT_LINE.match(line):
                name, what = m["name"] or m["name2"], m["what"] or m["what2"]
                key = {"XFAIL": "skipped", "XPASS": "passed"}.get(what, what.lower())
                counts[key] += 1
                if key in ("failed", "error"):
                    failing.append(name)
                bar.update()
        proc.wait()
    finally:
        bar.close()
        if proc.poll() is None:
            kill()
    fig.update(counts)
    fig["failing"] = failing
    fig["exit_code"] = proc.returncode
    if timed_out:
        raise StageTimeout(f"pytest stopped at its time box after {sum(counts.values())} results")
    if failing or proc.returncode not in (0, 5):
        raise RuntimeError(
            f"{len(failing)} failing: {', '.join(failing[:5])}" if failing else f"pytest exited with {proc.returncode}"
        )
    if sum(counts.values()) == 0:
        raise RuntimeError("pytest ran no tests")


GPU_KNOBS = ("hw_decoder_load", "hybrid_huffman_threshold", "preallocate")  # the mixed decoder's arguments


def sweep_default(ctx: Context) -> dict:
    """The sweep's first point: the Loader's own defaults, with all cores and the size's batch."""
    knobs = {k: getattr(Tuning, k) for k in ("prefetch", "hw_decoder_load", "hybrid_huffman_threshold")}
    return {"batch_size": ctx.size.batch_size, "threads": ctx.cores, "layout": "NCHW", "preallocate": False, **knobs}


def sweep_points(ctx: Context, default: dict, split) -> tuple[list[tuple[str, list]], dict[str, str]]:
    """(knob, values) in the order they are tried, the most telling first (a box may end the sweep), and the
    knobs left out here with why."""
    s = ctx.size
    threads = s.threads or tuple(sorted({max(1, ctx.cores // 2), ctx.cores}, reverse=True))
    batches = s.batches or (s.batch_size, 2 * s.batch_size)
    knobs = [
        ("hw_decoder_load", list(s.hw_decoder_load)),
        ("hybrid_huffman_threshold", list(s.hybrid_huffman_threshold)),
        ("preallocate", [True]),
        ("threads", list(threads)),
        ("batch_size", list(batches)),
        ("prefetch", list(s.prefetch)),
        ("layout", ["NHWC"]),
    ]  # channels_last batches (HWC from DALI): what --channels-last trains on
    if ctx.device != "gpu":
        skipped = dict.fromkeys(GPU_KNOBS, "GPU only: an argument of the mixed decoder; the CPU one ignores it")
    elif split.max_hw is None:
        skipped = {
            "preallocate": "manifest.json records no largest image (prepare wrote it before it did); "
            "re-run `alexnet prepare` for the hints"
        }
    else:
        skipped = {}
    return [(k, [default[k]] + [v for v in vals if v != default[k]]) for k, vals in knobs if k not in skipped], skipped


def stage_loader(ctx: Context, fig: dict) -> None:
    """bench loader's DALI contenders at the defaults, whether the hardware decoder is used, one knob at a time
    from the best setting so far, and the PyTorch DataLoader baseline last (its failure is only recorded)."""
    from alexdata.bench import bench_loader, hw_decoder_check, loader_rate
    from alexdata.dataset import open_split
    from alexdata.loader import resolve_stats

    data = _need_data(ctx)
    s = ctx.size
    kw = dict(batch_size=s.batch_size, seconds=s.loader_seconds, threads=ctx.cores, rounds=1)
    r = bench_loader(data, ctx.device, contenders=("decode_only", "pipeline"), **kw)
    gc.collect()
    fig.update({k: r[k] for k in ("decode_only", "pipeline", "pipeline_vs_decode_only", "batch_size", "threads")})
    ctx.check_time()
    split, stats = open_split(data, "train"), resolve_stats(None, data)
    if ctx.device == "gpu":
        try:
            fig["hw_decoder"] = hw_decoder_check(
                data, s.loader_seconds, batch_size=s.batch_size, threads=ctx.cores, opened=split
            )
        except Exception as e:  # the sweep below is worth more than this verdict: record it and go on
            fig["hw_decoder"] = {"used": None, "why": f"not measured: {one_line(e)}"}
        gc.collect()
        ctx.check_time()
    else:
        fig["hw_decoder"] = {"used": None, "why": "no GPU: the hardware JPEG decoder is a GPU's"}
    default = sweep_default(ctx)
    best, best_rate, sweep = dict(default), -1.0, []
    knobs, fig["sweep_skipped"] = sweep_points(ctx, default, split)
    with host.progress_bar(
        total=sum(len(v) for _, v in knobs) - len(knobs) + 1, desc="loader sweep", leave=False
    ) as bar:
        for i, (knob, values) in enumerate(knobs):
            for v in values[1:] if i else values:  # the default point is timed once, first
                ctx.check_time()
                point = {**best, knob: v}
                bar.update()
                try:
                    rate = loader_rate(data, s.loader_seconds, device=ctx.device, stats=stats, opened=split, **point)
                except Exception as e:  # a setting DALI refuses must not cost the sweep's other points
                    if not sweep:
                        raise  # the defaults themselves
                    sweep.append({**point, "error": one_line(e)})
                    continue
                sweep.append({**point, "img_s": rate})
                fig["sweep"] = sweep
                if rate > best_rate:
                    best, best_rate = point, rate
                    fig["best"] = {**best, "img_s": best_rate}
                    keep_best_loader(ctx, best)
    fig["default_img_s"] = sweep[0]["img_s"]
    fig["best_vs_default"] = best_rate / sweep[0]["img_s"]
    if best != default and s.repeats > 1:
        # Each sweep point is one reading, and two readings of one setting a minute apart differed by 17 % on
        # the H200: the best against the default, interleaved `repeats` times, decides whether it wins.
        reps = {"default": [], "best": []}
        for _ in range(s.repeats):
            for name, point in (("default", default), ("best", best)):
                ctx.check_time()
                reps[name].append(
                    loader_rate(data, s.loader_seconds, device=ctx.device, stats=stats, opened=split, **point)
                )
        fig["repeats"] = reps
        fig["best_vs_default"] = statistics.median(reps["best"]) / statistics.median(reps["default"])
        fig["best_vs_default_spread"] = (
            min(reps["best"]) / max(reps["default"]),
            max(reps["best"]) / min(reps["default"]),
        )
    ctx.check_time()
    try:
        fig["baseline"] = bench_loader(data, ctx.device, contenders=("baseline",), **kw)["baseline"]
        fig["pipeline_vs_baseline"] = fig["pipeline"] / fig["baseline"]
    except Exception as e:  # e.g. a /dev/shm too small for its workers' batches: recorded, the sweep stands
        fig["baseline_error"] = one_line(e)
    gc.collect()


BEST_LOADER = "loader_best.json"  # under the check's work folder: the loader stage's best setting, for a later run


def keep_best_loader(ctx: Context, best: dict) -> None:
    """The loader's best setting so far, for this run's later stages and, in WORK/loader_best.json, for a later
    check with the same work folder: the train stage runs before the loader stage, so end to end with the best
    setting is measured by a rerun (`--stages train` on the same machine)."""
    from alexdata.files import atomic_write

    ctx.best_loader = dict(best)
    if ctx.work is not None:
        record = {"device": ctx.device, "data": str(ctx.data), "batch_size": ctx.size.batch_size, "best": best}
        atomic_write(ctx.work / BEST_LOADER, json.dumps(record, indent=1))


def earlier_best_loader(ctx: Context) -> dict:
    """The best loader setting an earlier check's loader stage left in WORK for this device, data and batch; {}
    where there is none (or it is unreadable: the train stage then measures the default alone)."""
    try:
        record = json.loads((ctx.work / BEST_LOADER).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    if not isinstance(record, dict) or not isinstance(record.get("best"), dict):
        return {}
    same = (record.get("device"), record.get("data"), record.get("batch_size")) == (
        ctx.device,
        str(ctx.data),
        ctx.size.batch_size,
    )
    known = sweep_default(ctx)  # the sweep's knobs only: a file of another version names no others
    best = {k: v for k, v in record["best"].items() if k in known and type(v) is type(known[k])}
    if "threads" in best:
        best["threads"] = max(1, min(best["threads"], ctx.cores))  # another machine's cores
    return best if same else {}


def stage_stats(ctx: Context, fig: dict) -> None:
    from alexdata.bench import bench_stats

    r = bench_stats(_need_data(ctx), ctx.device, threads=ctx.cores, rounds=1)
    fig.update(
        decode_img_s=r["decode_img_s"],
        stats_img_s=r["stats_img_s"],
        stats_vs_decode_only=r["ratio"],
        images=r["images"],
    )


def stage_train(ctx: Context, fig: dict) -> None:
    """Synthetic variants first (no data needed), end to end with the loader's best and default settings, the
    profile, the LRN implementations, then TF32 and fused SGD, the host-sync ratio, two towers, the convolutions,
    twice the batch and torch.compile: `bench train`'s measurements (TrainBench), time-boxed one by one."""
    from alexmodel.tools.bench import TrainBench

    s = ctx.size
    tb = TrainBench(ctx.device, classes=s.classes, width=s.width, batch_size=s.batch_size, steps=s.train_steps)
    fig.update(classes=s.classes, width=s.width, batch_size=s.batch_size, steps=s.train_steps)
    syn = fig["synthetic_img_s"] = {}
    variants = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16_channels_last": ("bf16", True)}
    for name, (precision, cl) in variants.items():
        ctx.check_time()
        syn[name] = tb.synthetic(tb.model(cl), precision, cl)
    best_name = max(syn, key=syn.get)
    precision, cl = variants[best_name]
    ctx.best_train = {"precision": precision, "channels_last": cl}
    fig["best"] = best_name
    # End to end next, right after the synthetic variants it is compared with: it is a goal figure, and the
    # measurements after it only tune defaults.
    train_end_to_end(ctx, tb, fig, precision, cl)
    ctx.check_time()
    # Where the step's time goes (the model alone has missed the end-to-end goal: docs/BENCHMARKS.md): the top
    # kernels name the layer to work on.
    fig["profile"] = tb.profile(tb.model(cl), precision, cl, steps=min(5, s.train_steps))
    train_lrn(ctx, tb, fig, precision, cl)
    train_speed_options(ctx, tb, fig, precision, cl)
    if ctx.device == "gpu":
        train_gpu_only(ctx, tb, fig, precision, cl)
    train_compiled(ctx, tb, fig, precision, cl)


def train_end_to_end(ctx: Context, tb, fig: dict, precision: str, cl: bool) -> None:
    """The train stage's end to end: the trainer's step fed by the Loader at the loader's best setting (this
    check's loader stage, or an earlier check's) and at its defaults; on a GPU also echo 2 and the cache."""
    s, syn, best_name = ctx.size, fig["synthetic_img_s"], fig["best"]
    if ctx.data is not None:
        from alexdata.dataset import open_split
        from alexdata.loader import Loader, resolve_stats

        # The loader's best setting against its default, end to end: alone, the loader hides its contention with
        # the model for the GPU. The layout follows the model (channels_last batches for a channels_last model).
        default = {k: v for k, v in sweep_default(ctx).items() if k != "batch_size"}
        default["layout"] = "NHWC" if cl else "NCHW"
        found = ctx.best_loader
        if not found and (found := earlier_best_loader(ctx)):
            fig.setdefault("notes", []).append(f"the loader's best setting from an earlier check ({BEST_LOADER})")
        best = {**default, **{k: v for k, v in found.items() if k not in ("batch_size", "layout")}}
        split, stats = open_split(ctx.data, "train"), resolve_stats(None, ctx.data)
        e2e, runs = {}, {"best": best, "default": default}
        if best == default:
            del runs["default"]
            fig.setdefault("notes", []).append("end to end once: the loader's best setting is its default")
        for name, kw in runs.items():
            ctx.check_time()
            loader = Loader(str(ctx.data), stats=stats, batch_size=s.batch_size, device=ctx.device, opened=split, **kw)
            e2e[name] = tb.end_to_end(tb.model(cl), loader, precision, cl, steps=2 * s.train_steps, full_only=True)
            del loader
            gc.collect()
        r = e2e["best"]
        fig.update(
            end_to_end_img_s=r["images_per_s"],
            data_wait_frac=r["data_wait_frac"],
            device_wait_frac=r["device_wait_frac"],
            end_to_end_vs_synthetic=r["images_per_s"] / syn[best_name],
            end_to_end_loader=best,
        )
        if "default" in e2e:
            fig.update(
                end_to_end_default_img_s=e2e["default"]["images_per_s"],
                end_to_end_default_data_wait_frac=e2e["default"]["data_wait_frac"],
                end_to_end_best_vs_default=r["images_per_s"] / e2e["default"]["images_per_s"],
            )
        if ctx.device == "gpu":
            fig.update(past_the_decoder(ctx, tb, best, split, stats, precision, cl, r["images_per_s"]))
        else:
            fig.setdefault("notes", []).append("echo 2 and the decoded-image cache end to end: on a GPU only")
    else:
        fig["notes"] = ["end to end skipped: the data stage did not finish"]


def train_lrn(ctx: Context, tb, fig: dict, precision: str, cl: bool) -> None:
    """The LRN (alexmodel/lrn.py): the default ("auto": Triton or analytic, whichever its own timing picked) beside
    each implementation and the net without LRN (identity), whose ratio is the LRN's true share of the step."""
    import importlib.util

    from alexmodel import lrn

    triton = ctx.device == "gpu" and importlib.util.find_spec("triton") is not None
    impls = ["analytic", "pool", "identity"] + (["triton"] if triton else [])
    syn, best_name = fig["synthetic_img_s"], fig["best"]
    ctx.check_time()
    fig["lrn"] = {"auto_img_s": syn[best_name], "chosen": sorted(set(lrn._CHOSEN.values()))}
    for impl in impls:
        ctx.check_time()
        if fig["lrn"]["chosen"] == [impl]:  # "auto" ran this one, just measured: no second reading
            fig["lrn"][f"{impl}_img_s"] = syn[best_name]
            continue
        fig["lrn"][f"{impl}_img_s"] = tb.synthetic(tb.model(cl, lrn=impl), precision, cl)
    fig["lrn"]["auto_vs_pool"] = syn[best_name] / fig["lrn"]["pool_img_s"]
    fig["lrn"]["share_of_step"] = 1 - syn[best_name] / fig["lrn"]["identity_img_s"]


def train_speed_options(ctx: Context, tb, fig: dict, precision: str, cl: bool) -> None:
    """The trainer's speed-only options, each beside the plain setting measured before: "wins" says which default
    the next GPU session should keep (RunConfig.tf32, RunConfig.fused_sgd); the host-sync ratio; both towers on
    the one device."""
    syn, best_name = fig["synthetic_img_s"], fig["best"]
    if ctx.device == "gpu":
        ctx.check_time()
        plain, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True
        try:
            tf32 = tb.synthetic(tb.model(False), "fp32", False)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = plain  # as the fp32 variant ran (torch's default: off)
        fig["tf32"] = {
            "plain_img_s": syn["fp32"],
            "tf32_img_s": tf32,
            "tf32_vs_plain": tf32 / syn["fp32"],
            "wins": "tf32" if tf32 > syn["fp32"] else "plain",
        }
    else:
        fig["tf32"] = {"wins": None, "why": "no GPU: TF32 is a tensor-core mode of fp32 matmuls"}
    ctx.check_time()
    fused = tb.synthetic(tb.model(cl), precision, cl, fused_sgd=True)
    fig["fused_sgd"] = {
        "variant": best_name,
        "plain_img_s": syn[best_name],
        "fused_img_s": fused,
        "fused_vs_plain": fused / syn[best_name],
        "wins": "fused" if fused > syn[best_name] else "plain",
    }
    ctx.check_time()
    unsynced = tb.no_sync(tb.model(cl), precision, cl)
    fig["host_sync"] = {
        "trainer_img_s": syn[best_name],
        "no_sync_img_s": unsynced,
        "trainer_vs_no_sync": syn[best_name] / unsynced,
    }
    ctx.check_time()
    # The paper's two-tower code path (§3.2) with both towers on this one device: a second GPU is not lent here.
    fig["two_tower_one_device_img_s"] = tb.synthetic(tb.model(cl, devices=(tb.dev, tb.dev)), precision, cl)


def train_gpu_only(ctx: Context, tb, fig: dict, precision: str, cl: bool) -> None:
    """Each convolution alone in NCHW and NHWC (which layout cuDNN serves best, per layer), and the best variant at
    twice the batch (a step's fixed costs amortised): each recorded, a failure not fatal."""
    from alexmodel.tools.bench import TrainBench

    s = ctx.size
    for key, measure in (
        ("conv_tflops", lambda: tb.conv_tflops(precision)),
        (
            "batch_2x_img_s",
            lambda: TrainBench(
                ctx.device, classes=s.classes, width=s.width, batch_size=2 * s.batch_size, steps=s.train_steps // 2
            ).synthetic(tb.model(cl), precision, cl),
        ),
    ):
        ctx.check_time()
        try:
            fig[key] = measure()
        except Exception as e:
            fig[key + "_error"] = one_line(e)


def train_compiled(ctx: Context, tb, fig: dict, precision: str, cl: bool) -> None:
    """torch.compile last: compiling forward and backward takes a minute or so (inside the warm-up steps, outside
    the timing), so it runs only on a GPU and when the box still has 90 s; a compiler failure is recorded."""
    syn, best_name = fig["synthetic_img_s"], fig["best"]
    if ctx.device == "gpu" and ctx.left() > 90:
        t = time.perf_counter()
        try:
            syn[best_name + "_compile"] = tb.synthetic(torch.compile(tb.model(cl)), precision, cl)
            fig["compile_s"] = time.perf_counter() - t
        except Exception as e:
            fig["compile_error"] = one_line(e)
    else:
        fig.setdefault("notes", []).append(
            "compile not timed: "
            + (
                "a GPU run only (inductor takes minutes on a few CPU cores)"
                if ctx.device == "cpu"
                else f"{ctx.left():.0f} s left in the box, 90 needed"
            )
        )


def past_the_decoder(ctx: Context, tb, best: dict, split, stats, precision: str, cl: bool, best_img_s: float) -> dict:
    """End to end at the loader's best setting with data echoing 2 (each decoded image twice, differently
    augmented: images/s counts both; each step sees half the fresh images) and with the GPU decoder's cache of
    decoded images, sized to hold the check's whole train split and warmed by one epoch first: then nothing is
    decoded, so it is an upper bound (ImageNet's 1.28 M decoded images, ~330 GB, do not fit)."""
    from alexdata.loader import Loader

    s, out = ctx.size, {}
    # uint8 RGB at prepare's shorter side by the longest side recorded: no image is larger (the check's ~20k: ~15 GB)
    longest = max(split.max_hw or (512,))
    cache_gb = math.ceil(split.images * (split.shorter_side or 256) * longest * 3 * 1.1 / 2**30)
    for name, kw in (("echo2", {"echo": 2}), ("cache", {"gpu_cache_gb": cache_gb})):
        ctx.check_time()
        loader = Loader(
            str(ctx.data), stats=stats, batch_size=s.batch_size, device=ctx.device, opened=split, **best, **kw
        )
        if name == "cache":
            for _ in loader:  # one epoch fills the cache ("threshold": each image it decodes until full)
                pass
        r = tb.end_to_end(tb.model(cl), loader, precision, cl, steps=2 * s.train_steps, full_only=True)
        del loader
        gc.collect()
        out[f"end_to_end_{name}_img_s"] = r["images_per_s"]
        out[f"end_to_end_{name}_vs_best"] = r["images_per_s"] / best_img_s
    out["cache"] = {"gb": cache_gb, "images": split.images, "upper_bound": True}
    return out


def stage_paper_init(ctx: Context, fig: dict) -> None:
    """The paper's recipe from its init on the stage-1 data, until the box (or paper_init_s) runs out. The net,
    its optimizer and its loader are built as `alexnet train` builds them (build.py, loaders.py), from configs."""
    from dataclasses import fields, replace

    from alexdata.dataset import open_split
    from alexdata.loader import resolve_stats
    from alexmodel.build import build_net, build_optimizer
    from alexmodel.config import DataConfig, RunConfig, recipe
    from alexmodel.distributed import Dist
    from alexmodel.loaders import make_loaders
    from alexmodel.loop import StopRequested, train_one_epoch

    data = _need_data(ctx)
    s = ctx.size
    model_cfg, aug, optim = recipe("paper", width=s.width)  # batch 128, lr 0.01, momentum 0.9, wd 5e-4 (§5)
    split = open_split(data, "train")
    classes = len(split.classes)
    precision, cl = (
        (ctx.best_train.get("precision", "bf16"), ctx.best_train.get("channels_last", True))
        if ctx.device == "gpu"
        else ("fp32", False)
    )
    best = ctx.best_loader or earlier_best_loader(ctx)
    run = RunConfig(device=ctx.device, precision=precision, channels_last=cl, validate=False, progress=False)
    data_cfg = DataConfig(
        str(data),
        aug=aug,
        threads=best.get("threads", ctx.cores),
        tuning=Tuning(**{f.name: best[f.name] for f in fields(Tuning) if f.name in best}),
        verify=False,  # the data stage made it
    )
    d = Dist()
    net, _ = build_net(replace(model_cfg, num_classes=classes), run, d)
    opt, _, _ = build_optimizer(net, optim, run)
    loader, _ = make_loaders(
        data_cfg, run, {"train": split}, stats=resolve_stats(None, data), batch_size=optim.batch_size, device_id=0, d=d
    )
    chance = math.log(classes)
    per_epoch = len(loader)
    every = max(1, min(20, per_epoch // 4))  # a point every few steps, several per epoch
    fig.update(
        width=s.width,
        classes=classes,
        batch_size=optim.batch_size,
        lr=optim.lr,
        precision=precision,
        channels_last=cl,
        chance_loss=chance,
        log_every=every,
        loss_log=[],
    )
    seconds = min(s.paper_init_s, max(0.0, ctx.left()))
    state = {"steps": 0, "images": 0}
    t0 = time.perf_counter()
    bar = host.progress_bar(
        total=round(seconds),
        desc="paper init",
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}",
    )

    def on_window(meter, w):  # the trainer's own logging window: its loss is the mean over `every` steps
        state["steps"] += w["steps"]
        state["images"] += w["images"]
        fig["loss_log"].append([state["steps"], round(w["loss"], 4)])
        # Left chance: a window's mean loss 10 % below ln(classes), the loss of a uniform guess.
        if "left_chance_step" not in fig and w["loss"] < 0.9 * chance:
            fig["left_chance_step"] = state["steps"]
        bar.n = min(bar.total, round(time.perf_counter() - t0))
        bar.set_postfix_str(f"step {state['steps']}, loss {w['loss']:.3f}", refresh=True)

    try:
        while True:
            train_one_epoch(
                net,
                opt,
                loader,
                precision=precision,
                channels_last=cl,
                log_every=every,
                on_window=on_window,
                stop=lambda: time.perf_counter() - t0 >= seconds,
            )
    except StopRequested:
        pass
    finally:
        bar.close()
        del loader
        gc.collect()
    dt = time.perf_counter() - t0
    log = fig["loss_log"]
    fig.update(
        steps=state["steps"],
        seconds_trained=dt,
        epochs=state["steps"] / per_epoch,
        img_s=state["images"] / dt,
        first_loss=log[0][1] if log else None,
        last_loss=log[-1][1] if log else None,
        min_loss=min(v for _, v in log) if log else None,
        left_chance=int("left_chance_step" in fig),
    )
