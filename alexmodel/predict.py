"""`alexnet predict`: a trained checkpoint's top-5 classes for image files, through the evaluation pipeline.

Each JPEG or PNG goes through the same DALI graph as `alexnet evaluate` (pipelines/eval.py): decode, shorter side
to 256, the central 227 crop (or the ten crops of paper §4.1 with `ten_crop`), minus the mean the run trained
with. So predict and evaluate give the same probabilities for the same image (tests/test_cli_usability.py).

A file that is missing, empty, not a JPEG/PNG, cut short or damaged inside (libjpeg's strict check, as in
`prepare`) is reported in its place ({"image", "error"}) and the others are predicted: DALI would stop the whole
batch at it, or decode its missing part as grey. A directory stands for its image files, found
by extension, recursively.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alexdata import host
from alexdata.dataset import IMAGE_EXTS, DataError, Split, image_problem
from alexmodel.checkpoint import load_run, model_from_checkpoint, stats_from_checkpoint
from alexmodel.config import resolve_device
from alexmodel.loop import evaluate_views
from pipelines.config import AugmentConfig


def image_files(images: list[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """(path, why it cannot be read or None) of every image `images` names, in order: a file as it is, a
    directory as its .JPEG/.jpg/.png files (recursively, sorted). `why` from the path and the first and last
    bytes, and libjpeg's strict check of the data (alexdata/dataset.py `image_problem`, strict: a few files)."""
    out: list[tuple[str, str | None]] = []
    for p in map(Path, images):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
            out += [(str(q), image_problem(q, strict=True)) for q in found]
            if not found:
                out.append((str(p), "a directory without .JPEG/.jpg/.png files"))
        elif not p.is_file():
            out.append((str(p), "no such file"))
        elif p.suffix.lower() not in IMAGE_EXTS:
            out.append((str(p), "not a .JPEG/.jpg/.png file"))
        else:
            out.append((str(p), image_problem(p, strict=True)))
    return out


def predict(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    *,
    ten_crop: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    top: int = 5,
) -> list[dict]:
    """One dict per image, in the order of `images` (a directory: its image files, sorted): {"image": path,
    "top": [(wnid, probability), ...], "names": [class name or None, ...]} with the `top` most likely classes,
    or {"image": path, "error": why} for a file that cannot be read; the others are predicted all the same."""
    device = resolve_device(device)
    saved = load_run(checkpoint)  # first: a wrong checkpoint is the one error, whatever the images
    found = image_files(images)
    if not found:
        raise DataError("no images given")
    good = [p for p, why in found if why is None]
    probs, failed = {}, {}
    classes = saved["config"]["classes"]
    if good:
        names = saved["config"].get("class_names") or [None] * len(classes)  # None where the run recorded none
        index = torch.cuda.current_device() if device == "gpu" else 0
        model = model_from_checkpoint(saved, host.torch_device(device, index))
        kw = dict(
            classes=tuple(classes),
            stats=stats_from_checkpoint(saved),
            aug=AugmentConfig(**saved["config"]["data"]["aug"]),
            ten_crop=ten_crop,
            batch_size=batch_size,
            device=device,
            index=index,
            threads=threads,
        )
        _predict_isolating(model, good, probs, failed, **kw)
    out = []
    for path, why in found:
        why = why or failed.get(path)
        if why:
            out.append({"image": path, "error": why})
            continue
        values, idx = probs[path].topk(min(top, len(classes)))
        out.append(
            {
                "image": path,
                "top": [(classes[int(i)], float(v)) for v, i in zip(values, idx)],
                "names": [names[int(i)] for i in idx],
            }
        )
    return out


def _predict_isolating(model, paths: list[str], probs: dict, failed: dict, **kw) -> None:
    """probs[path] = the mean softmax of each path's views; a batch that DALI cannot decode (a file damaged
    inside, which its first and last bytes did not show) is halved until the bad files stand alone in failed."""
    try:
        probs.update(zip(paths, _probabilities(model, paths, **kw)))
    except DataError as e:
        if len(paths) == 1:
            failed[paths[0]] = str(e)
            return
        half = len(paths) // 2
        _predict_isolating(model, paths[:half], probs, failed, **kw)
        _predict_isolating(model, paths[half:], probs, failed, **kw)


def _probabilities(model, paths, *, classes, stats, aug, ten_crop, batch_size, device, index, threads):
    """(len(paths), classes) probabilities through the evaluation pipeline: `evaluate`'s, on these files."""
    from alexdata.loader import Loader

    split = Split("files", classes, len(paths), files=tuple(paths), labels=(0,) * len(paths))
    loader = Loader(
        "(images)",
        split="val",
        mode="tencrop" if ten_crop else "center",
        opened=split,
        stats=stats,
        aug=aug,
        batch_size=min(batch_size, len(paths)),
        device=device,
        device_id=index,
        threads=threads,
    )
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(evaluate_views(model, x).exp().cpu())  # (B, classes): the mean softmax of the views
    return torch.cat(out)
