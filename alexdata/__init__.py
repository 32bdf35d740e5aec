"""Dataset formats: the mini-ImageNet generator, `prepare` (raw ImageNet -> shards), statistics and the loader."""
