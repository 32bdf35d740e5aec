"""The checkpoint file and the run directory's checkpoint names: what is written, how, and how it is read back.

A checkpoint holds everything the next step depends on: model, optimizer, lr scheduler and GradScaler states,
the global step, the epoch's running sums when taken mid-epoch, the statistics the inputs were normalised with
(per channel in the config, the mean image as a tensor beside it: `stats_from_checkpoint`), and per
data-parallel rank the loader's position inside the epoch (`Loader.state_dict()`) and the random generators
(torch, CUDA, numpy, python).

Everything in it is a tensor or a plain Python value (the numpy RNG state is stored as a tensor), so it loads
with `torch.load(path, weights_only=True)`, which runs no pickled code: a checkpoint from elsewhere is safe to
open. Format 1 (before that) held numpy objects and is refused with one line.

In a run directory (`save`, `load_latest`):
    checkpoint.pt             the latest checkpoint
    checkpoint.prev.pt        the one before it (the spare), moved aside only once the new one is complete
    checkpoint.pt.new         a save cut between its two renames: the newest complete checkpoint
    *.tmp                     a save cut short (a kill, a power loss); removed when a run starts
    checkpoint.unreadable.pt  a latest checkpoint that did not load (or failed its CRC, NaN or layout check), set aside
                              for a look once the run went on from the spare (so the next save does not make it
                              the spare)
    .lock                     held by the run writing the directory (alexdata.files.lock_dir): "host pid"
Every file is written to `NAME.tmp` and renamed over NAME (`os.replace` is atomic on POSIX), so a name on disk
always holds a complete checkpoint.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sys
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from alexdata.errors import TrainError, disk_full
from alexdata.files import atomic_open
from alexmodel.model import INITS, MAX_WIDTH, AlexNet
from pipelines.config import SHORTER_SIDE, AugmentConfig, PipelineStats, Tuning

FORMAT = 2  # bump when the layout below changes; 2: loadable with weights_only=True, classes in the config
CHECKPOINT, PREVIOUS, UNREADABLE = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.unreadable.pt"
NEW = CHECKPOINT + ".new"  # save_atomic's complete new file, before it is renamed over CHECKPOINT
PARTS = ("config", "model", "epoch", "step", "meter", "optimizer", "plateau", "scaler", "ranks", "history")  # `save`'s
LEFTOVERS = (CHECKPOINT + ".tmp", NEW, NEW + ".tmp")  # the names of a save cut short


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether run_dir holds a checkpoint to continue: the latest, the spare, or one cut between the spare's two
    renames (checkpoint.pt.new)."""
    d = Path(run_dir)
    return any((d / n).is_file() for n in (CHECKPOINT, PREVIOUS, NEW))


# ---------------------------------------------------------------------------------------------- writing


def save_atomic(obj, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """torch.save to `path.tmp`, flushed to disk, then renamed over `path` (alexdata.files.atomic_open).

    previous: where the checkpoint being replaced goes (the spare), moved only once the new one is complete on
    disk. A crash between the two renames leaves the spare and `path.new`: load_latest takes the latter."""
    if previous is None or not os.path.exists(path):
        with atomic_open(path) as f:
            torch.save(obj, f)
        return
    tmp = f"{path}.new"
    with atomic_open(tmp) as f:
        torch.save(obj, f)
    os.replace(path, previous)
    os.replace(tmp, path)


def save(
    run_dir: Path,
    *,
    config: dict,
    mean_image_255: torch.Tensor | None,
    epoch: int,
    step: int,
    meter: dict | None,
    model: dict,
    optimizer: dict,
    plateau: dict,
    scaler: dict,
    ranks: list[dict],
    history: list[dict],
) -> None:
    """run_dir/checkpoint.pt after `step` global steps, the one it replaces kept as the spare.

    epoch: epochs finished (meter None) or the one in progress (meter: its EpochMeter's fields); ranks: per rank
    {"loader": Loader.state_dict(), "rng": rng_state()}; the rest are state_dicts, and the run's history.
    A full disk (or quota) raises TrainError in one line: the new file is removed, the ones before it stay whole."""
    try:
        save_atomic(
            {
                "format": FORMAT,
                "config": config,
                "mean_image_255": mean_image_255,
                "epoch": epoch,
                "step": step,
                "meter": meter,
                "model": model,
                "optimizer": optimizer,
                "plateau": plateau,
                "scaler": scaler,
                "ranks": ranks,
                "history": history,
            },
            run_dir / CHECKPOINT,
            previous=run_dir / PREVIOUS,
        )
    except (OSError, RuntimeError) as e:  # torch.save's stream writer wraps a failed write in a RuntimeError
        if not disk_full(e):
            raise
        kept = [n for n in (CHECKPOINT, PREVIOUS) if (run_dir / n).is_file()]
        then = (
            f"{' and '.join(kept)} (the checkpoints before it) are intact; free some space and continue with --resume"
            if kept
            else "no checkpoint was written yet; free some space and start again"
        )
        free = shutil.disk_usage(run_dir).free / 1e6
        raise TrainError(f"{run_dir}: disk full while writing a checkpoint ({free:.0f} MB free); {then}") from None


def start(run_dir: Path, saved: dict | None) -> None:
    """Makes run_dir ready for a run's saves: removes what a save cut short left, and sets the unreadable
    latest checkpoint aside when `saved` came from the spare (rank 0, once the run goes on)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in LEFTOVERS:
        (run_dir / leftover).unlink(missing_ok=True)
    if saved is not None and saved.get("_loaded_from") == PREVIOUS and (run_dir / CHECKPOINT).exists():
        os.replace(run_dir / CHECKPOINT, run_dir / UNREADABLE)


# ---------------------------------------------------------------------------------------------- reading


def load(path: str | os.PathLike) -> dict:
    """A checkpoint written by the trainer, on the CPU, loaded with weights_only=True (no pickled code runs);
    TrainError with one line when it cannot be read, is damaged, or holds NaN/inf weights or statistics.

    torch.load reads the zip archive torch.save writes without checking its CRCs, so a flipped byte in tensor data
    would load; every member's CRC is checked first (zipfile's testzip: one extra read of the file)."""
    try:
        if not zipfile.is_zipfile(path):
            open(path, "rb").close()  # a missing or unreadable file says so
            raise TrainError(f"{path}: not a checkpoint (torch.save writes a zip archive; this file is not one)")
        bad = _damaged_member(path)
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    if bad:
        raise TrainError(f"{path}: damaged ({bad} fails its CRC check)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if "numpy" in str(e):
            raise TrainError(
                f"{path}: a format-1 checkpoint (numpy objects inside), which only an unsafe load "
                f"(weights_only=False) reads; retrain, or load it yourself if you trust its source"
            )
        why = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler error" in line), first)
        # torch's advice after "Please use" is how to load the file unsafely: left out
        why = why.split(" Please use")[0].removeprefix("WeightsUnpickler error: ").rstrip(".")
        raise TrainError(f"{path}: not a checkpoint that loads safely ({why[:200]})") from None
    except Exception as e:  # truncated or foreign file
        raise TrainError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise TrainError(f"{path}: not a trainer checkpoint of format {FORMAT}" + (f" (format {got})" if got else ""))
    bad = _missing(ckpt) or _plain_problem(ckpt)
    if bad:
        raise TrainError(f"{path}: {bad}; the checkpoint is damaged")
    try:  # every tensor's shape against what its config builds, before any is read whole (the NaN check reads)
        check_shapes(ckpt)
    except TrainError as e:
        raise TrainError(f"{path}: {e}") from None
    bad = _tensor_problem(ckpt)
    if bad:
        raise TrainError(f"{path}: {bad}; the checkpoint is damaged")
    bad = _non_finite(ckpt)
    if bad:
        raise TrainError(f"{path}: {bad} holds NaN or inf values; the checkpoint is damaged")
    return ckpt


def _missing(ckpt: dict) -> str | None:
    """What a loaded checkpoint lacks of the parts `save` writes (or has in another type than a dict), named; None."""
    gone = [k for k in PARTS if k not in ckpt]
    if gone:
        return f"no {', '.join(gone)} in it"
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stats_255"), dict):
        return "its config holds no statistics (stats_255)"
    if not isinstance(cfg.get("model"), dict) or not {"num_classes", "width", "init"} <= cfg["model"].keys():
        return "its config holds no model (num_classes, width, init)"
    if not isinstance(ckpt["model"], dict) or not all(isinstance(t, torch.Tensor) for t in ckpt["model"].values()):
        return "its model is not a dict of tensors"
    return None


def _whole(v, least: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _numbers(v, shape: tuple[int, ...]) -> bool:
    """Whether `v` is plain numbers (lists of them) of this shape."""
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        return False
    return a.shape == shape and a.dtype.kind in "iuf"


def _plain_problem(ckpt: dict) -> str | None:
    """The first plain field of a loaded checkpoint (a hand edit: the fields a weights-only load accepts) that is
    not what `save` writes, named by its path, with what is allowed; None when all are. The one schema check,
    run on every load, so evaluate, predict and a resume read only fields of the right type and length."""
    for k in ("epoch", "step"):
        if not _whole(ckpt[k]):
            return f"{k} is {ckpt[k]!r}, not a whole number >= 0"
    if not (isinstance(ckpt["history"], list) and all(isinstance(h, dict) for h in ckpt["history"])):
        return "history is not a list of per-epoch records (dicts)"
    cfg, model = ckpt["config"], ckpt["config"]["model"]
    if not _whole(model["num_classes"], 1):
        return f"config.model.num_classes is {model['num_classes']!r}, not a whole number >= 1"
    w = model["width"]
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w <= MAX_WIDTH):
        return f"config.model.width is {w!r}, not a number in (0, {MAX_WIDTH}]"
    if model["init"] not in INITS:
        return f"config.model.init is {model['init']!r}, not one of {', '.join(INITS)}"
    n = model["num_classes"]
    classes = cfg.get("classes")
    if not (isinstance(classes, list) and len(classes) == n and all(isinstance(c, str) for c in classes)):
        return f"config.classes must list the {n} class names (strings), got {str(classes)[:40]}"
    names = cfg.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == n):
        return f"config.class_names must be None or {n} names"
    aug = (cfg.get("data") or {}).get("aug") if isinstance(cfg.get("data"), dict) else None
    if not isinstance(aug, dict):
        return "config.data.aug is not a record of the augmentation"
    # What this version writes and an older one did not (data echoing, the train files' fingerprint, newer
    # augmentation fields): such a checkpoint is refused whole, rather than read with guessed defaults.
    missing = [f"data.aug.{f.name}" for f in fields(AugmentConfig) if f.name not in aug]
    missing += [] if "echo" in cfg["data"] else ["data.echo"]
    missing += [] if isinstance(cfg["data"].get("tuning"), dict) else ["data.tuning"]
    missing += [] if "data_fingerprint" in cfg else ["data_fingerprint"]
    if missing:
        return (
            f"config.{missing[0]} is missing: a checkpoint of an older version of this project; resume or evaluate "
            f"it with that version (its config.json's revision), or train anew"
        )
    for name, what, cls, record in (
        ("aug", "an AugmentConfig", AugmentConfig, aug),
        ("tuning", "a Tuning", Tuning, cfg["data"]["tuning"]),
    ):
        try:
            cls(**record)
        except (TypeError, ValueError) as e:
            return f"config.data.{name} does not make {what} ({str(e).splitlines()[0][:120]})"
    st = cfg["stats_255"]
    if set(st) != {"mean_255", "std_255", "eigval_255", "eigvec"}:
        return "config.stats_255 must hold mean_255, std_255, eigval_255 and eigvec"
    for k, shape, optional in (
        ("mean_255", (3,), False),
        ("std_255", (3,), False),
        ("eigval_255", (3,), True),
        ("eigvec", (3, 3), True),
    ):
        if not ((optional and st[k] is None) or _numbers(st[k], shape)):
            return f"config.stats_255.{k} must be numbers of shape {list(shape)}{' or null' if optional else ''}"
    return None


def _tensor_problem(ckpt: dict) -> str | None:
    """The first tensor of a loaded checkpoint that is not a plain float tensor whose storage holds its elements
    (a stride-0 tensor expanded to 10^12 elements would be materialised by the first whole read), named."""
    m = ckpt.get("mean_image_255")
    tensors = list(ckpt["model"].items()) + ([("mean image", m)] if m is not None else [])
    for name, t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return f"{name} is not a floating-point tensor"
        if t.untyped_storage().nbytes() < t.numel() * t.element_size():
            return f"{name} ({list(t.shape)}) has fewer elements stored than its shape holds"
    if m is not None and tuple(m.shape) != (SHORTER_SIDE, SHORTER_SIDE, 3):
        return f"the mean image has shape {list(m.shape)}, not [{SHORTER_SIDE}, {SHORTER_SIDE}, 3]"
    return None


def _damaged_member(path: str | os.PathLike) -> str | None:
    """The first member of the zip archive at `path` whose CRC does not match its data (or that does not read),
    None when all match."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged directory or header
        return f"the archive ({type(e).__name__}: {str(e)[:80]})"


def _non_finite(ckpt: dict) -> str | None:
    """The first model tensor or statistic of a loaded checkpoint that holds NaN or inf, named; None if none."""
    model = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else {}
    for name, t in model.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"weight {name}"
    m = ckpt.get("mean_image_255")
    if isinstance(m, torch.Tensor) and not bool(torch.isfinite(m.double()).all()):
        return "the mean image"
    stats = (ckpt.get("config") or {}).get("stats_255") or {}
    for k, v in stats.items():
        if not np.isfinite(np.asarray(v, dtype=np.float64)).all():
            return f"statistic {k}"
    return None


def load_run(path: str | os.PathLike) -> dict:
    """A checkpoint file, or a run directory's checkpoint.pt (`alexnet evaluate`, `predict`, `alexmodel.load`)."""
    p = Path(path)
    return load(p / CHECKPOINT if p.is_dir() else p)


def load_latest(run_dir: Path, rank: int = 0) -> dict:
    """The latest readable checkpoint in run_dir (a resume): checkpoint.pt, or checkpoint.pt.new where a save
    stopped between its renames, else the spare, saying so in one line (rank 0)."""
    ckpt, prev, new = run_dir / CHECKPOINT, run_dir / PREVIOUS, run_dir / NEW
    if not ckpt.is_file() and new.is_file():
        ckpt = new  # a crash between save_atomic's two renames: the newest complete checkpoint is here
    if not ckpt.is_file() and not prev.is_file():
        raise TrainError(f"--resume: {ckpt} not found (no run to continue in {run_dir})")
    try:
        return check_resumable(load(ckpt), ckpt)
    except TrainError as e:
        if not prev.is_file():
            raise
        try:
            saved = check_resumable(load(prev), prev)
        except TrainError as e2:
            raise TrainError(f"{e}; the spare {prev.name} too: {e2}") from None
        if rank == 0:
            print(
                f"train: {ckpt.name} is unreadable ({str(e).removeprefix(f'{ckpt}: ')[:120]}); resuming from the spare "
                f"{prev.name} (epoch {saved['epoch']}, step {saved['step']})",
                file=sys.stderr,
            )
        saved["_loaded_from"] = PREVIOUS
        return saved


def model_from_checkpoint(saved: dict, device: str | torch.device = "cpu") -> AlexNet:
    """The trained network of a loaded checkpoint, in eval mode on `device` (both towers on it)."""
    cfg = saved["config"]["model"]
    check_shapes(saved)
    net = AlexNet(cfg["num_classes"], width=cfg["width"], init=cfg["init"])
    net.load_state_dict(saved["model"])
    return net.to(device).eval()


def check_shapes(saved: dict) -> None:
    """Refuses a checkpoint whose tensors are not the shapes its model config builds, before a model is built
    (a damaged config claiming a huge width would otherwise allocate it): the model is laid out on the meta
    device, which allocates nothing."""
    cfg = saved["config"]["model"]
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in AlexNet(cfg["num_classes"], width=cfg["width"]).state_dict().items()}
    except (ValueError, TypeError, RuntimeError) as e:
        raise TrainError(f"the checkpoint's model config does not build ({e})") from None
    have = {k: tuple(v.shape) for k, v in saved["model"].items()}
    for k in sorted(want.keys() | have.keys()):
        if want.get(k) != have.get(k):
            raise TrainError(
                f"the checkpoint's {k} has shape {have.get(k)} but its config (width {cfg['width']}, "
                f"{cfg['num_classes']} classes) makes {want.get(k)}; the checkpoint is damaged"
            )


def check_resumable(saved: dict, path: str | os.PathLike) -> dict:
    """`saved` (a loaded checkpoint at `path`) when every part a resume loads fits what its config builds, else
    TrainError in one line naming the part: the model's tensors (`check_shapes`), the optimizer's parameters and
    momentum buffers, the scheduler, scaler and meter, and every rank's loader position and random generators (tried
    on fresh generators: the process's own stay as they are)."""
    try:
        check_shapes(saved)
    except TrainError as e:
        raise TrainError(f"{path}: {e}") from None
    bad = _unresumable(saved)
    if bad:
        raise TrainError(f"{path}: {bad}; the checkpoint is damaged")
    return saved


def _unresumable(saved: dict) -> str | None:
    cfg = saved["config"]["model"]
    with torch.device("meta"):
        params = [(n, tuple(p.shape)) for n, p in AlexNet(cfg["num_classes"], width=cfg["width"]).named_parameters()]
    opt = saved["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        return "its optimizer state is not torch.optim.SGD's (state, param_groups)"
    ids = [
        i for g in opt["param_groups"] if isinstance(g, dict) and isinstance(g.get("params"), list) for i in g["params"]
    ]
    if not all(isinstance(i, int) for i in ids) or sorted(ids) != list(range(len(params))):
        held = f"{ids[:4]}{'...' if len(ids) > 4 else ''}"
        return f"its optimizer's groups hold parameters {held} but the model has {len(params)}"
    for i, st in opt["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params)):
            return f"its optimizer's state names parameter {i!r}, the model has {len(params)}"
        buf = st.get("momentum_buffer") if isinstance(st, dict) else None
        if buf is not None and (not isinstance(buf, torch.Tensor) or tuple(buf.shape) != params[i][1]):
            got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
            return f"its optimizer's momentum buffer of {params[i][0]} is {got}, not {params[i][1]}"
    for k in ("plateau", "scaler"):
        if not isinstance(saved[k], dict):
            return f"its {k} state is not a dict"
    if not (isinstance(saved["meter"], dict) or saved["meter"] is None) or not isinstance(saved["history"], list):
        return "its epoch meter or history is malformed"
    if not isinstance(saved["ranks"], list) or not saved["ranks"]:
        return "it holds no ranks' states"
    for r, rank in enumerate(saved["ranks"]):
        if not isinstance(rank, dict) or not isinstance(rank.get("loader"), dict):
            return f"rank {r}'s loader position is missing"
        why = _rng_problem(rank.get("rng"))
        if why:
            return f"rank {r}'s random generator states do not load ({why})"
    return None


def _rng_problem(state) -> str | None:
    """Why `state` (an `rng_state()`) would not load, tried on new generators; None when it loads. CUDA states are
    only type-checked: setting one would open a context on that GPU."""
    try:
        torch.Generator().set_state(state["torch"])
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in (state["cuda"] or {}).values()):
            raise TypeError("a CUDA state is not a byte tensor")
        n = state["numpy"]
        np.random.RandomState().set_state(
            (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        )
        random.Random().setstate(_python_state(state["python"]))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:100]}"
    return None


def stats_from_checkpoint(saved: dict) -> PipelineStats:
    """The statistics a loaded checkpoint's run trained with: the per-channel ones in its config, and its mean
    image (a tensor beside the config; absent from checkpoints written before it existed)."""
    m = saved.get("mean_image_255")
    return PipelineStats(**saved["config"]["stats_255"], mean_image_255=None if m is None else m.numpy())


def check_classes(cfg: dict, classes, checkpoint, data) -> None:
    """Refuses data whose class list is not the one the checkpoint was trained on (the labels would lie)."""
    mine = list(classes)
    theirs = cfg.get("classes") or []
    if len(mine) != cfg["model"]["num_classes"]:
        raise TrainError(f"{checkpoint} predicts {cfg['model']['num_classes']} classes but {data} has {len(mine)}")
    if theirs and theirs != mine:
        diff = [(a, b) for a, b in zip(theirs, mine) if a != b]
        raise TrainError(
            f"{checkpoint} was trained on other classes than {data} holds ({len(diff)} of {len(mine)} "
            f"differ, e.g. {diff[0][0]} vs {diff[0][1]})"
        )


def incompatibility(saved: dict, now: dict, keys: list[str]) -> str | None:
    """The first dotted key (e.g. "model.width") whose value differs between two nested config dicts,
    described in one short phrase (values only when they are short); None when they all agree."""
    for key in keys:
        a, b = saved, now
        for part in key.split("."):
            a, b = a.get(part) if isinstance(a, dict) else None, b.get(part) if isinstance(b, dict) else None
        if a != b:
            if len(repr(a)) + len(repr(b)) <= 60:
                return f"{key} is {a!r} in the checkpoint but {b!r} now"
            return f"{key} differs from the checkpoint's"
    return None


# ---------------------------------------------------------------------------------------------- generators


def rng_state(cuda_devices=()) -> dict:
    """The states of every generator the training step draws from (dropout: torch, and the CUDA devices the model
    uses: only those, so a rank never opens a context on the other ranks' GPUs), as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": {str(dev): torch.cuda.get_rng_state(dev) for dev in cuda_devices},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    for dev, st in (state["cuda"] or {}).items():
        torch.cuda.set_rng_state(st, dev)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_python_state(state["python"]))


def _python_state(saved) -> tuple:
    return tuple(saved) if not isinstance(saved, tuple) else saved
