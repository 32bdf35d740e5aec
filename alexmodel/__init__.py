"""The paper's two-tower AlexNet (Krizhevsky et al. 2012); see alexmodel/model.py.

    from alexmodel import load
    model, classes, stats = load("runs/alexnet")          # a run directory or a checkpoint.pt
    # model: AlexNet in eval mode; classes: the wnids, in the order of the logits;
    # stats: the PipelineStats the run trained with (mean_255, std_255, eigval_255, eigvec, mean_image_255)
    probs = model(model.preprocess([Image.open("photo.jpg")])).softmax(1)   # the run's own preprocessing
    # model.class_names: a human-readable name per class where prepare found them, else None

Checkpoints load with torch.load(weights_only=True): no pickled code runs, so one from elsewhere is safe to open.

The trainer, one job per file, in the order a run meets them:
model.py        the network (imports only torch)
config.py       DataConfig, OptimConfig, RunConfig, the recipes, and the rules that turn options into configs
loop.py         train_one_epoch, evaluate: the step loop and evaluation; schedule.py the warmup-cosine lr
distributed.py  ranks under torchrun, and the stop on a signal that every rank agrees on
checkpoint.py   the checkpoint file and its names in a run directory, written and read here only
runlog.py       config.json, metrics.jsonl, steps.jsonl, plot.png
loaders.py      the run's splits checked and its train/val Loaders made; build.py the net and its optimizer
resume.py       a resume: which checkpoint, whether it fits these options and data, its states restored
train.py        train(): one run, built from the configs, epoch by epoch; progress.py its bar and lines
evaluate.py     `alexnet evaluate`; predict.py `alexnet predict`; preprocess.py the same preprocessing in torch
tools/          `alexnet check`, `alexnet bench train`, `alexnet demo`
"""


def __getattr__(name: str):
    """AlexNet and ModelConfig from model.py on first use: importing a submodule (alexmodel.config, which the
    command line reads for its options) does not import torch."""
    if name in ("AlexNet", "ModelConfig"):
        from alexmodel import model

        return getattr(model, name)
    raise AttributeError(f"module 'alexmodel' has no attribute {name!r}")


def load(path, *, device="cpu"):
    """(model, classes, stats) of a trained checkpoint, for inference and export: the AlexNet in eval mode on
    `device`, the class wnids in logit order, and the statistics its inputs were normalised with. The model
    carries the run's evaluation preprocessing, `model.preprocess` (alexmodel/preprocess.py: PIL images or
    uint8 tensors in, the centre crop the model takes out), and `model.class_names` (None where prepare found
    no names)."""
    from alexmodel.checkpoint import load_run, model_from_checkpoint, stats_from_checkpoint
    from alexmodel.preprocess import Preprocess
    from pipelines.config import AugmentConfig

    saved = load_run(path)
    model, stats = model_from_checkpoint(saved, device), stats_from_checkpoint(saved)
    model.preprocess = Preprocess.of(stats, AugmentConfig(**saved["config"]["data"]["aug"]))
    model.class_names = saved["config"].get("class_names")  # absent in checkpoints of runs that recorded no names
    return model, list(saved["config"]["classes"]), stats


__all__ = ["AlexNet", "ModelConfig", "load"]
