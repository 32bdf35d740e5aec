"""alexmodel.resume's rules for what a resume may change: epochs grow, not shrink, where the lr schedule is laid out
over them; a run that could be resumed once can be resumed again."""

from dataclasses import asdict, replace

import pytest

from alexdata.errors import TrainError
from alexmodel.config import OptimConfig, start_rules
from alexmodel.resume import refuse_fewer_epochs


def saved(optim: OptimConfig, done: int, mid_epoch: bool = False) -> dict:
    return {"epoch": done, "meter": {"steps": 3} if mid_epoch else None, "config": {"optim": asdict(optim)}}


COSINE = OptimConfig(recipe="modern", batch_size=512, schedule="cosine", warmup_epochs=5.0, epochs=12)


def test_a_cosine_run_may_grow_its_epochs_but_not_shrink_them():
    ck = saved(start_rules(COSINE, say=False), done=6, mid_epoch=True)
    with pytest.raises(TrainError, match="--epochs 7: this cosine run is set to 12 epochs") as e:
        refuse_fewer_epochs(ck, 7)
    assert "\n" not in str(e.value)
    refuse_fewer_epochs(ck, 12)
    refuse_fewer_epochs(ck, 16)
    with pytest.raises(TrainError, match="the run has done 6 epoch"):
        refuse_fewer_epochs(ck, 6)


def test_a_plateau_run_may_end_sooner():
    """The shrink a cosine run refuses is accepted where the lr schedule is not laid out over the epochs."""
    paper = OptimConfig(epochs=90)
    assert refuse_fewer_epochs(saved(paper, done=6), 60) is None
    with pytest.raises(TrainError, match="--epochs 60: this cosine run is set to 90 epochs"):
        refuse_fewer_epochs(saved(replace(COSINE, epochs=90), done=6), 60)


def test_each_accepted_resume_can_be_resumed_again():
    """The sequence that locked a run out: start, resume with the epochs a resume accepts, resume again. Every
    step's warmup (after the cap) equals the checkpoint's, so the compatibility check passes each time."""
    first = start_rules(COSINE, say=False)
    ck = saved(first, done=6, mid_epoch=True)
    for epochs in (12, 16, 16):
        refuse_fewer_epochs(ck, epochs)
        again = start_rules(replace(COSINE, epochs=epochs), ck["config"]["optim"], say=False)
        assert again.warmup_epochs == ck["config"]["optim"]["warmup_epochs"]
        ck = saved(again, done=ck["epoch"] + 1)
