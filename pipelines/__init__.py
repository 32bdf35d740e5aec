"""DALI pipeline definitions, one file per pipeline, each built by a plain function of its config.

train.py  read -> decode -> (resize) -> random 227 crop -> flip -> PCA lighting + mean (one fused op)
eval.py   read -> decode -> (resize) -> centre crop, or the paper's ten crops
common.py the shared pieces: readers, label parsing, crop-window arithmetic
"""
from pipelines.config import AugmentConfig, PipelineStats

__all__ = ["AugmentConfig", "PipelineStats"]
