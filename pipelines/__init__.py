"""DALI pipeline definitions, one file per pipeline, each built by a plain function of its config. This package
imports nothing else of the project, so it can be read and tested alone.

config.py  what a pipeline takes: the samples (`Split`), the augmentation, the statistics, how it runs (`RunSpec`)
train.py   read -> decode -> (resize) -> random 227 crop -> flip -> PCA lighting + mean (one fused op)
inception.py  read -> torchvision's RandomResizedCrop window -> decode it alone -> resize -> flip -> lighting + mean
eval.py    read -> decode -> (resize) -> centre crop, or the paper's ten crops
stats.py   read -> decode -> images or their sums (the statistics pass); read -> decode alone (benchmarks)
common.py  the shared pieces: readers, label parsing, decoding, crop-window arithmetic
"""

from pipelines.config import AugmentConfig, PipelineStats, RunSpec, Split

__all__ = ["AugmentConfig", "PipelineStats", "RunSpec", "Split"]
