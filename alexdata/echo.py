"""Data echoing (Choi et al. 2019, "Faster Neural Network Training with Data Echoing", arXiv:1907.05550): every
decoded image gives `copies` independently augmented samples, so while decoding limits the input pipeline the
images/s it delivers rise towards `copies` x. The train pipeline decodes each image once and augments it `copies`
times with draws of its own (pipelines/train.py, `echo`); this module hands the copies out in different batches.

    echo = Echo(copies=2, seed=0)
    for batch in echo.epoch(dali_iterator, checkpoint):   # one epoch: [{"images", "labels"}] as DALI gives them
        ...
    position = echo.position(checkpoint)                  # (DALI checkpoint, {"group", "done"}); echo.resume(...)

The order: SPREAD consecutive DALI batches (sizes s_1..s_g, M images; the epoch's last group may hold fewer
batches) form a group, which hands out g * copies batches: copy 0's g batches are the DALI batches themselves
(no copy), then for each further copy the group's M images are permuted afresh and cut into batches of sizes
s_1..s_g (one copy of the pixels). Each batch holds an image at most once, an image's copies lie in `copies`
different batches (on average SPREAD batches apart), and the later copies' batches mix the images of SPREAD DALI
batches, so they are not copy 0's sets over again (but in an epoch's last group when it holds one DALI batch).
The permutations come from (seed, group number): the same seed gives the same batches.

An epoch reads each image once and hands it out `copies` times: `copies` x the batches (and the steps) of an
epoch without echoing. Per-rank batch counts stay equal across data-parallel ranks, as every rank's DALI batch
count is (alexdata/loader.py): a group's batches have its DALI batches' sizes, an empty one included.

Resuming: a position inside a group is the DALI checkpoint taken before the group was read plus the batches of the
group handed out; the group is read again, its permutations drawn again from the same numbers, and the batches
handed out already are skipped, so the rest is exactly what an uninterrupted run gives."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

SPREAD = 2  # DALI batches whose images an echoed batch mixes (an image's copies not side by side)


def image_key(copy: int) -> str:
    """The DALI iterator's name of the pipeline's output of copy `copy` (pipelines/train.py yields them in order)."""
    return f"images{copy}"


def plan(sizes: list[int], copies: int, rng: np.random.Generator) -> list[list[tuple[int, int, np.ndarray]]]:
    """The batches a group of DALI batches of `sizes` hands out, in order: each a list of (copy, DALI batch, rows
    of it), so a batch is a gather of its parts. Copy 0's batches are the DALI batches as they come (DALI's
    reader has shuffled them already); each later copy permutes the group's images afresh and cuts them into
    pieces of `sizes`, sorted rows per piece."""
    offsets = np.cumsum([0, *sizes])
    out = [[(0, j, np.arange(n))] for j, n in enumerate(sizes)]
    for copy in range(1, copies):
        perm = rng.permutation(offsets[-1])
        for a, b in zip(offsets[:-1], offsets[1:]):
            idx = np.sort(perm[a:b])
            src = np.searchsorted(offsets, idx, side="right") - 1  # the DALI batch each image came in
            out.append([(copy, j, idx[src == j] - offsets[j]) for j in range(len(sizes)) if (src == j).any()])
    return out


def gather(group: list[dict], parts: list[tuple[int, int, np.ndarray]]) -> dict:
    """One batch {"images", "labels"} of `parts` (from `plan`) of the group's DALI outputs. A whole DALI batch
    in order is handed out as DALI gave it, without a copy; any other batch is gathered into a new tensor. On the
    GPU: one index_select per part, its rows sent from pinned memory without waiting for the device. On the CPU:
    numpy, row by row into a numpy array (2 cores, 64 float32 crops: 6 ms; a torch.empty target took 28 ms,
    numpy's take 12 ms, torch's OpenMP copies 540 ms as their threads fought DALI's for the cores)."""
    if len(parts) == 1 and len(parts[0][2]) == len(group[parts[0][1]]["labels"]):
        copy, j, _ = parts[0]
        return {"images": group[j][image_key(copy)], "labels": group[j]["labels"]}
    x0, y0 = group[0][image_key(0)], group[0]["labels"]
    n = sum(len(r) for _, _, r in parts)
    if x0.is_cuda:
        images = torch.empty((n, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    else:
        out = np.empty((n, *x0.shape[1:]), x0.numpy().dtype)
    labels = torch.empty((n, *y0.shape[1:]), dtype=y0.dtype)  # on the CPU, as DALI gives them
    a = 0
    for copy, j, r in parts:
        src, b = group[j][image_key(copy)], a + len(r)
        if x0.is_cuda:
            rows = torch.from_numpy(r).pin_memory().to(src.device, non_blocking=True)
            torch.index_select(src, 0, rows, out=images[a:b])
        else:
            s = src.numpy()
            for k, row in enumerate(r.tolist()):
                out[a + k] = s[row]
        labels[a:b] = group[j]["labels"][torch.from_numpy(r)]
        a = b
    return {"images": images if x0.is_cuda else torch.from_numpy(out), "labels": labels}


class Echo:
    """The echoed batches of a DALI iterator whose pipeline yields `copies` image outputs (`image_key`) and
    "labels", epoch by epoch, with a position to resume from (module docstring). A loop that stops early leaves
    a group in progress; the Loader `drop`s it before its next pass."""

    def __init__(self, copies: int, seed: int):
        self.copies, self.seed = copies, seed
        self._group = 0  # the group being handed out, or the next one between groups
        self._pending: dict | None = None  # the group in progress: its DALI outputs, plan, next batch
        self._start: str | None = None  # the DALI checkpoint before the group in progress
        self._done = 0  # batches of the group in progress handed out
        self._skip = 0  # batches of the next group read to skip (after `resume`)
        self._ended = False  # the epoch's last batch is out, but the loop has not seen the epoch end yet

    def epoch(self, it, checkpoint: Callable[[], str]) -> Iterator[list[dict]]:
        """One epoch of the DALI iterator `it`, echoed; `checkpoint()`: DALI's position now. Yields [batch] as the
        iterator yields its outputs. RuntimeErrors (a sample that fails to decode) pass through."""
        while True:
            if self._ended:
                self._ended = False
                return
            if self._pending is None:
                start, group = checkpoint(), []
                for _ in range(SPREAD):
                    try:
                        group.append(next(it)[0])
                    except StopIteration:  # the epoch ends inside this group (DALI has reset itself)
                        break
                if not group:
                    return
                rng = np.random.default_rng([self.seed % 2**63, self._group])
                batches = plan([len(g["labels"]) for g in group], self.copies, rng)
                self._pending = {"group": group, "plan": batches, "next": self._skip, "last": len(group) < SPREAD}
                self._start, self._done, self._skip = start, self._skip, 0
            p = self._pending
            while p["next"] < len(p["plan"]):
                i = p["next"]
                p["next"] += 1
                self._done += 1
                if p["next"] == len(p["plan"]):  # the group's last batch: a position now starts after the group
                    self._end_group(p)
                yield [gather(p["group"], p["plan"][i])]
            if self._pending is p:  # (nothing was left to hand out)
                self._end_group(p)

    def _end_group(self, p: dict) -> None:
        self._pending, self._start, self._done, self._group = None, None, 0, self._group + 1
        self._ended = p["last"]

    def drop(self) -> bool:
        """Forget the rest of the epoch in progress (a loop left before its end: the Loader starts the next pass
        afresh). True when DALI's iterator still holds some of that epoch, to be read and dropped; False when
        its last batch is read already (DALI has reset itself)."""
        held = self._ended or (self._pending is not None and self._pending["last"])
        self._pending, self._start, self._done, self._skip, self._ended = None, None, 0, 0, False
        return not held

    def position(self, checkpoint: Callable[[], str]) -> tuple[str, dict]:
        """(DALI checkpoint to build the pipeline from, {"group", "done"} for `resume`) after the batches handed
        out so far. After an epoch's last batch it is the next epoch's start, as DALI's own position is there."""
        if self._start is None:
            return checkpoint(), {"group": self._group, "done": 0}
        return self._start, {"group": self._group, "done": self._done}

    def resume(self, where: dict) -> None:
        """Continue at `where` (`position`'s second half) on a pipeline built from its checkpoint."""
        self._group, self._skip = int(where["group"]), int(where["done"])
        self._pending, self._start, self._done, self._ended = None, None, 0, False
