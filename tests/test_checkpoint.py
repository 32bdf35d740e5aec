"""alexmodel.checkpoint's load: a checkpoint edited by hand (in the fields a weights-only load accepts) is one line
naming the field, before any tensor is read whole; never a traceback or a terabyte allocation."""

from dataclasses import asdict

import pytest
import torch

from alexdata.errors import TrainError
from alexmodel import AlexNet
from alexmodel.checkpoint import FORMAT, load, save_atomic
from pipelines.config import AugmentConfig, Tuning

CLASSES = 3
STATE = AlexNet(CLASSES, width=0.125).state_dict()


def valid() -> dict:
    """What `save` writes, for a 1/8-width net of 3 classes (the trainer's own parts left as empty states)."""
    return {
        "format": FORMAT,
        "config": {
            "model": {"num_classes": CLASSES, "width": 0.125, "init": "paper"},
            "classes": ["n01", "n02", "n03"],
            "data": {
                "aug": asdict(AugmentConfig(central_square=True, mean="pixel")),
                "tuning": asdict(Tuning()),
                "echo": 1,
            },
            "data_fingerprint": "0123456789abcdef",
            "stats_255": {
                "mean_255": [120.0, 115.0, 100.0],
                "std_255": [60.0, 58.0, 57.0],
                "eigval_255": [4000.0, 250.0, 30.0],
                "eigvec": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            },
        },
        "mean_image_255": torch.full((256, 256, 3), 110.0),
        "epoch": 2,
        "step": 40,
        "meter": None,
        "model": dict(STATE),
        "optimizer": {},
        "plateau": {},
        "scaler": {},
        "ranks": [{}],
        "history": [{"epoch": 1}],
    }


def _set(path: str, value):
    """An edit setting the field at the dotted `path` (a state dict key after "model." stays whole)."""

    def edit(ck):
        *head, last = path.split(".", 1) if path.startswith("model.") else path.split(".")
        d = ck
        for k in head:
            d = d[k]
        d[last] = value(d[last]) if callable(value) else value

    return edit


EDITS = {
    "epoch as a string": (_set("epoch", "3"), "epoch is '3', not a whole number"),
    "a history of integers": (_set("history", [1, 2]), "history is not a list of per-epoch records"),
    "a crop as a string": (_set("config.data.aug.crop", "227"), "config.data.aug does not make an AugmentConfig"),
    "an unknown augmentation field": (_set("config.data.aug.crops", 1), "config.data.aug does not make"),
    "classes as an integer": (_set("config.classes", 3), "config.classes must list the 3 class names"),
    "classes too short": (_set("config.classes", ["n01"]), "config.classes must list the 3 class names"),
    "stats as strings": (_set("config.stats_255.mean_255", "abc"), "config.stats_255.mean_255 must be numbers"),
    "a huge width": (_set("config.model.width", 1e6), "config.model.width is 1000000.0, not a number in"),
    "fc8 expanded to 10^12 elements": (
        _set("model.fc8.weight", torch.zeros(1, 1).expand(1_000_000, 1_000_000)),
        r"fc8.weight has shape \(1000000, 1000000\) but its config",
    ),
    "fc8 expanded to its own shape": (
        _set("model.fc8.weight", lambda w: torch.zeros(1, 1).expand(*w.shape)),
        r"fc8.weight \(\[3, 512\]\) has fewer elements stored than its shape holds",
    ),
    "an older version's (no data echoing yet)": (
        lambda ck: ck["config"]["data"].pop("echo"),
        r"config\.data\.echo is missing: a checkpoint of an older version of this project; resume or evaluate it "
        r"with that version",
    ),
    "an older version's (fewer augmentation fields)": (
        lambda ck: ck["config"]["data"]["aug"].pop("ratio"),
        r"config\.data\.aug\.ratio is missing: a checkpoint of an older version",
    ),
    "an older version's (the DALI knobs flat in data)": (
        lambda ck: ck["config"]["data"].update(prefetch=ck["config"]["data"].pop("tuning")["prefetch"]),
        r"config\.data\.tuning is missing: a checkpoint of an older version",
    ),
    "a DALI knob out of range": (
        _set("config.data.tuning.hw_decoder_load", 2.0),
        r"config\.data\.tuning does not make a Tuning \(hw_decoder_load must be in \[0, 1\]",
    ),
    "a mean image expanded": (
        _set("mean_image_255", torch.zeros(1, 1, 1).expand(100_000, 100_000, 3)),
        r"mean image \(\[100000, 100000, 3\]\) has fewer elements stored",
    ),
}


def test_a_valid_checkpoint_loads(tmp_path):
    save_atomic(valid(), tmp_path / "c.pt")
    assert load(tmp_path / "c.pt")["step"] == 40


@pytest.mark.parametrize("case", list(EDITS))
def test_a_hand_edited_field_is_one_line_naming_it(tmp_path, case):
    edit, message = EDITS[case]
    ck = valid()
    edit(ck)
    save_atomic(ck, tmp_path / "c.pt")
    with pytest.raises(TrainError, match=message) as e:
        load(tmp_path / "c.pt")
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "c.pt"))
