"""The paper's two-tower AlexNet (Krizhevsky et al. 2012); see alexmodel/model.py.

    from alexmodel import load
    model, classes, stats = load("runs/alexnet")          # a run directory or a checkpoint.pt
    # model: AlexNet in eval mode; classes: the wnids, in the order of the logits;
    # stats: the PipelineStats the run trained with (mean_255, std_255, eigval_255, eigvec, mean_image_255)

Checkpoints load with torch.load(weights_only=True): no pickled code runs, so one from elsewhere is safe to open.
"""

from alexmodel.model import AlexNet, ModelConfig


def load(path, *, device="cpu"):
    """(model, classes, stats) of a trained checkpoint, for inference and export: the AlexNet in eval mode on
    `device`, the class wnids in logit order, and the statistics its inputs were normalised with."""
    from alexmodel.train import load_checkpoint, model_from_checkpoint, stats_from_checkpoint

    saved = load_checkpoint(path)
    return model_from_checkpoint(saved, device), list(saved["config"]["classes"]), stats_from_checkpoint(saved)


__all__ = ["AlexNet", "ModelConfig", "load"]
