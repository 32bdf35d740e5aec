"""What a run prints as it goes: a live bar per epoch on a terminal, a line per logging window elsewhere (Slurm,
nohup), and a line per epoch; each shows the data wait beside the speed, the number an input pipeline moves.
"""

from __future__ import annotations


def epoch_bar(epoch: int, epochs: int, history: list[dict], *, total: int, initial: int):
    """The tqdm bar of epoch `epoch` (from 0) of `epochs` steps, with the last val top-1 where there is one."""
    from tqdm import tqdm

    desc = f"epoch {epoch + 1}/{epochs}" + (
        f" (val top-1 {100 * history[-1]['val_top1']:.1f}%)" if history and history[-1]["val_top1"] is not None else ""
    )
    return tqdm(total=total, initial=initial, unit="step", leave=False, desc=desc, dynamic_ncols=True)


def window_line(rec: dict, w: dict) -> str:
    """One logging window's line: `rec` as steps.jsonl records it, `w` the window's figures."""
    return (
        f"epoch {rec['epoch']:.2f}  step {rec['step']}  loss {w['loss']:.3f}  top-1 {100 * w['top1']:.1f}%  "
        f"lr {w['lr']:.3g}  {w['images_per_s']:.0f} img/s  data wait {100 * w['data_wait_frac']:.0f}%"
    )


def print_epoch(m: dict, epochs: int) -> None:
    """One epoch's line, `m` as metrics.jsonl records it; above a live bar where one is drawn."""
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
