"""The paper's two-tower AlexNet (Krizhevsky et al. 2012); see alexmodel/model.py.

    from alexmodel import load
    model, classes, stats = load("runs/alexnet")          # a run directory or a checkpoint.pt
    # model: AlexNet in eval mode; classes: the wnids, in the order of the logits;
    # stats: the PipelineStats the run trained with (mean_255, std_255, eigval_255, eigvec, mean_image_255)

Checkpoints load with torch.load(weights_only=True): no pickled code runs, so one from elsewhere is safe to open.

The trainer, one job per file, in the order a run meets them:
model.py        the network (imports only torch)
config.py       DataConfig, OptimConfig, RunConfig, the recipes, and the rules that turn options into configs
loop.py         train_one_epoch, evaluate: the step loop and evaluation
distributed.py  ranks under torchrun, and the stop on a signal that every rank agrees on
checkpoint.py   the checkpoint file and its names in a run directory, written and read here only
runlog.py       config.json, metrics.jsonl, steps.jsonl, plot.png
train.py        train(): one run, built from the configs, epoch by epoch
evaluate.py     `alexnet evaluate`; predict.py `alexnet predict`
tools/          `alexnet check`, `alexnet bench train`, `alexnet demo`
"""

from alexmodel.model import AlexNet, ModelConfig


def load(path, *, device="cpu"):
    """(model, classes, stats) of a trained checkpoint, for inference and export: the AlexNet in eval mode on
    `device`, the class wnids in logit order, and the statistics its inputs were normalised with."""
    from alexmodel.checkpoint import load_run, model_from_checkpoint, stats_from_checkpoint

    saved = load_run(path)
    return model_from_checkpoint(saved, device), list(saved["config"]["classes"]), stats_from_checkpoint(saved)


__all__ = ["AlexNet", "ModelConfig", "load"]
