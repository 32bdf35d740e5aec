"""The paper's two-tower AlexNet (Krizhevsky et al. 2012); see alexmodel/model.py."""

from alexmodel.model import AlexNet, ModelConfig

__all__ = ["AlexNet", "ModelConfig"]
