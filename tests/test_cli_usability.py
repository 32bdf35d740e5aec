"""What a new user trips over: stats re-run then resume, checkpoints that know their classes, safe loading and
`alexmodel.load`, `alexnet predict` against evaluate, unfinished or mistaken folders, training options."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, val_images

from alexdata.errors import ConfigError
from alexmodel import load
from alexmodel.evaluate import evaluate_checkpoint


@pytest.fixture
def run(one_epoch, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(one_epoch, d)
    return d


def test_rerunning_stats_keeps_the_file_and_a_resume_uses_the_checkpoints(data, run, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(data, d)
    before = (d / "stats.json").read_text()
    r = run_cli("stats", d, "--max-images", 7, "--threads", 1)  # another sample: other statistics
    assert (d / "stats.json").read_text() == before and (d / "stats.new.json").is_file()
    assert "holds other statistics and was kept" in r.stderr and "--force" in r.stderr
    run_cli("stats", d, "--max-images", 7, "--threads", 1, "--force")
    assert (d / "stats.json").read_text() != before
    # The resume goes on with the statistics the run trained with, kept in its checkpoint.
    trained = torch.load(run / "checkpoint.pt", weights_only=True)["config"]["stats_255"]
    run_cli("train", d, "--out", run, "--resume", "--epochs", 2)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["stats_255"] == trained
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["command"][1:3] == ["train", str(data)] and len(cfg["resumes"]) == 1  # the first command kept
    assert cfg["resumes"][0]["command"][-3:] == ["--resume", "--epochs", "2"]


def test_renamed_classes_are_refused_by_resume_and_evaluate(data, run, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(data, d)
    man = json.loads((d / "manifest.json").read_text())
    man["classes"] = [c.replace("n0", "n9") for c in man["classes"]]  # the same images, other wnids
    (d / "manifest.json").write_text(json.dumps(man))
    r = run_cli("train", d, "--out", run, "--resume", "--epochs", 2, check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "classes differs from the checkpoint's" in err[0], r.stderr
    r = run_cli("evaluate", d, "--checkpoint", run, check=False)  # a run directory works as --checkpoint
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "trained on other classes" in err[0], r.stderr


def test_checkpoints_load_safely_and_through_the_api(run, data):
    saved = torch.load(run / "checkpoint.pt", weights_only=True)  # no pickled code
    model, classes, stats = load(run)
    assert classes == json.loads((data / "manifest.json").read_text())["classes"] == saved["config"]["classes"]
    assert not model.training and model.fc8.out_features == len(classes)
    assert list(stats.mean_255) == pytest.approx(saved["config"]["stats_255"]["mean_255"])
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    old = dict(saved, format=1)
    old["ranks"] = [{"rng": {"numpy": np.random.get_state()}}]  # what format 1 held
    torch.save(old, run / "old.pt")
    r = run_cli("evaluate", data, "--checkpoint", run / "old.pt", check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "format-1 checkpoint" in err[0], r.stderr


@pytest.mark.parametrize("ten_crop", [False, True])
def test_predict_agrees_with_evaluate(run, data, tmp_path, ten_crop):
    from alexmodel.predict import predict

    files, labels = val_images(data, tmp_path / "imgs")
    got = predict(run, files, ten_crop=ten_crop, device="cpu", threads=1, top=3)
    classes = json.loads((data / "manifest.json").read_text())["classes"]
    ev = evaluate_checkpoint(data, run / "checkpoint.pt", ten_crop=ten_crop, device="cpu", threads=1)
    assert [g["image"] for g in got] == [str(f) for f in files]
    top1 = np.mean([g["top"][0][0] == classes[y] for g, y in zip(got, labels)])
    p_true = [dict(g["top"])[classes[y]] for g, y in zip(got, labels)]  # 3 classes: all of them listed
    assert top1 == ev["top1"] and -np.mean(np.log(p_true)) == pytest.approx(ev["loss"], rel=1e-5)
    assert all(sum(p for _, p in g["top"]) == pytest.approx(1, abs=1e-5) for g in got)


def test_predict_cli(run, data, tmp_path):
    files, _ = val_images(data, tmp_path / "imgs")
    from PIL import Image

    png = tmp_path / "imgs" / "as.png"
    Image.open(files[0]).save(png)
    r = run_cli("predict", "--checkpoint", run, files[0], png, "--json", "--device", "cpu", "--threads", 1)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in rows] == [str(files[0]), str(png)] and all(len(x["top"]) == 3 for x in rows)
    assert rows[0]["top"][0]["class"] == rows[1]["top"][0]["class"]  # the same picture, losslessly as PNG
    text = run_cli("predict", "--checkpoint", run, files[0], "--device", "cpu", "--threads", 1).stdout
    assert text.startswith(f"{files[0]}: n") and text.count("%") == 3
    bad = run_cli("predict", "--checkpoint", run, tmp_path / "missing.jpg", check=False)
    assert bad.returncode == 1 and "no such file" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_wrong_checkpoint_is_the_one_error_whatever_the_images(tmp_path):
    from alexdata.errors import UserError
    from alexmodel.predict import predict

    with pytest.raises(UserError, match=f"^{tmp_path / 'nope.pt'}: no such checkpoint$"):
        predict(tmp_path / "nope.pt", [tmp_path / "missing.jpg"])  # the image is missing too: the checkpoint first
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=r"notes.pt: not a checkpoint \(torch.save writes a zip archive"):
        predict(tmp_path / "notes.pt", [tmp_path / "missing.jpg"])
    torch.save({"x": Foreign()}, tmp_path / "foreign.pt")  # a zip archive whose pickle names a class
    with pytest.raises(UserError, match=r"foreign.pt: not a checkpoint that loads safely \(Unsupported global: ") as e:
        predict(tmp_path / "foreign.pt", [tmp_path / "missing.jpg"])
    assert "Please use" not in str(e.value) and "\n" not in str(e.value)  # torch's advice to load it unsafely: cut
    for cmd in ("predict", "evaluate"):  # train's default --out
        assert "[default: runs/alexnet]" in " ".join(run_cli(cmd, "--help").stdout.split())


class Foreign:
    pass


def test_unfinished_and_mistaken_folders_are_named(prepared, synth_tree, tmp_path):
    d = tmp_path / "half"
    shutil.copytree(prepared, d)
    (d / "manifest.json").unlink()
    (d / "train-000001.tar").unlink()
    for cmd in (["stats", d], ["train", d, "--out", tmp_path / "r", *TINY], ["bench", "loader", d]):
        r = run_cli(*cmd, check=False)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(err) == 1 and "prepare has not finished" in err[0], (cmd, r.stderr)
        assert "missing at least train-000001" in err[0] and "run the same `alexnet prepare" in err[0]
    r = run_cli("prepare", prepared, tmp_path / "o", check=False)  # SRC and OUT swapped
    assert r.returncode == 1 and "did you swap SRC and OUT?" in r.stderr
    r = run_cli("prepare", synth_tree, synth_tree / "train", check=False)  # into a folder of other files
    assert r.returncode == 1 and "holds other files" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("synth", synth_tree, "--classes", 2, check=False)
    assert r.returncode == 1 and "is not empty" in r.stderr


def test_training_options_resume_edges_and_notices(data, tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "train",
        data,
        "--out",
        out,
        "--recipe",
        "modern",
        "--width",
        0.0625,
        "--batch-size",
        8,
        "--device",
        "cpu",
        "--torch-threads",
        1,
        "--threads",
        1,
        "--no-progress",
        "--epochs",
        1,
        "--momentum",
        0.8,
        "--weight-decay",
        1e-4,
        "--label-smoothing",
        0.05,
    )
    assert "--warmup-epochs 5 capped to 0.5, half of the 1 epoch" in r.stderr
    optim = json.loads((out / "config.json").read_text())["config"]["optim"]
    assert (optim["momentum"], optim["weight_decay"], optim["label_smoothing"], optim["warmup_epochs"]) == (
        0.8,
        1e-4,
        0.05,
        0.5,
    )
    done = run_cli("train", data, "--out", out, "--resume")
    assert "nothing to do" in done.stderr
    fewer = run_cli("train", data, "--out", out, "--resume", "--epochs", 1, "--label-smoothing", 0.1, check=False)
    assert fewer.returncode == 1 and "label_smoothing" in fewer.stderr  # a changed optimiser setting: refused
    paper = run_cli(
        "train",
        data,
        "--out",
        tmp_path / "p",
        "--width",
        0.0625,
        "--batch-size",
        16,
        "--device",
        "cpu",
        "--torch-threads",
        1,
        "--threads",
        1,
        "--no-progress",
        "--epochs",
        1,
    )
    assert "the paper recipe keeps lr 0.01 at --batch-size 16" in paper.stderr and "--lr 0.00125" in paper.stderr
    assert run_cli("--version").stdout.startswith("alexnet, version ")


def test_fewer_epochs_than_done_are_refused(run, data):
    r = run_cli("train", data, "--out", run, "--resume", "--epochs", 2)
    assert "nothing to do" not in r.stderr
    r = run_cli("train", data, "--out", run, "--resume", "--epochs", 1, check=False)
    assert r.returncode == 1 and "--epochs 1: the run has done 2 epoch(s)" in r.stderr


def test_nan_before_any_checkpoint_says_start_again(data, tmp_path):
    r = run_cli("train", data, "--out", tmp_path / "nan", "--epochs", 1, "--lr", 1e6, *TINY, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "no checkpoint was written yet; start again with a lower --lr" in lines[0] and "--resume" not in lines[0]


def test_speed_options_reach_the_loader(data, tmp_path, monkeypatch):
    """--prefetch, --hw-decoder-load and --channels-last (as the NHWC layout) arrive in the Loader's arguments,
    from `alexnet train` and `alexnet bench loader` alike; a spy stops each command there."""
    from click.testing import CliRunner

    import cli
    from alexdata.errors import ConfigError
    from alexdata.loader import Loader

    seen = []

    def spy(self, data, **kw):
        seen.append(kw)
        raise ConfigError("spied")  # a user's error: the command prints its one line and stops

    monkeypatch.setattr(Loader, "__init__", spy)
    threads = torch.get_num_threads()  # TINY's --torch-threads 1 would stay with this process
    try:
        r = CliRunner().invoke(
            cli.main,
            [
                "train",
                str(data),
                "--out",
                str(tmp_path / "r"),
                *map(str, TINY),
                "--prefetch",
                "3",
                "--hw-decoder-load",
                "0.9",
                "--channels-last",
            ],
        )
    finally:
        torch.set_num_threads(threads)
    tuning = seen[0]["tuning"]
    assert "spied" in r.output and (tuning.prefetch, tuning.hw_decoder_load, seen[0]["layout"]) == (
        3,
        0.9,
        "NHWC",
    )
    seen.clear()
    r = CliRunner().invoke(
        cli.main,
        [
            "bench",
            "loader",
            str(data),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--prefetch",
            "4",
            "--hw-decoder-load",
            "0.8",
        ],
    )
    assert "spied" in r.output and (seen[0]["tuning"].prefetch, seen[0]["tuning"].hw_decoder_load) == (4, 0.8)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(data, tmp_path, monkeypatch):
    """The command line turns a UserError into `Error: <line>` and exit status 1; any other exception is a bug
    and reaches the caller whole."""
    from click.testing import CliRunner

    import alexmodel.train
    import cli
    from alexdata.errors import TrainError

    def fails_with(e):
        def run(*a, **kw):
            raise e

        return run

    args = ["train", str(data), "--out", str(tmp_path / "r")]
    monkeypatch.setattr(alexmodel.train, "train_from_options", fails_with(TrainError("the user's mistake")))
    r = CliRunner().invoke(cli.main, args)
    assert r.exit_code == 1 and r.output.strip() == "Error: the user's mistake"
    monkeypatch.setattr(alexmodel.train, "train_from_options", fails_with(ValueError("a bug")))
    r = CliRunner().invoke(cli.main, args)
    assert isinstance(r.exception, ValueError) and "Error:" not in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hw-decoder-load", 1.5], "hw_decoder_load must be in [0, 1] (the hardware decoder's share), got 1.5"),
        (["--prefetch", 0], "prefetch must be an int >= 1 (batches prepared ahead), got 0"),
    ],
)
def test_bad_speed_options_are_one_line(data, tmp_path, args, message):
    r = run_cli("train", data, "--out", tmp_path / "r", *TINY, *args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stderr
    r = run_cli("bench", "loader", data, "--device", "cpu", *args, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and args[0][2:].replace("-", "_") in lines[0], r.stderr


def test_a_resume_may_change_the_speed_options(run, data):
    run_cli(
        "train",
        data,
        "--out",
        run,
        "--resume",
        "--epochs",
        2,
        "--prefetch",
        3,
        "--hw-decoder-load",
        0.9,
        "--channels-last",
        "--no-tf32",
        "--fused-sgd",
    )
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    cfg = saved["config"]
    assert (cfg["data"]["tuning"]["prefetch"], cfg["data"]["tuning"]["hw_decoder_load"]) == (3, 0.9)
    assert cfg["run"]["channels_last"] and not cfg["run"]["tf32"] and cfg["run"]["fused_sgd"]
    assert all(g["fused"] for g in saved["optimizer"]["param_groups"])  # not the plain SGD the run started with


@pytest.mark.parametrize(
    "command, config",
    [
        (("train",), "Tuning"),
        (("bench", "loader"), "Tuning"),
        (("train",), "RunConfig"),
        (("train",), "OptimConfig"),
        (("train",), "DataConfig"),
    ],
    ids=["train-tuning", "bench-loader-tuning", "train-run", "train-optim", "train-data"],
)
def test_every_setting_is_an_option_made_from_its_field(command, config):
    """A field of pipelines.config.Tuning (a DALI knob) or of alexmodel.config's RunConfig, OptimConfig or
    DataConfig is all a setting declares above its use: the command offers it as --its-name (or the name in its
    metadata), with the field's default, choices, range and help, a bool as --x/--no-x (or the metadata's "off"
    name)."""
    from dataclasses import fields

    import click

    import cli
    from alexmodel.config import DataConfig, OptimConfig, RunConfig
    from pipelines.config import Tuning

    cls = {"Tuning": Tuning, "RunConfig": RunConfig, "OptimConfig": OptimConfig, "DataConfig": DataConfig}[config]
    cmd = cli.main
    for name in command:
        cmd = cmd.commands[name]
    options = {p.name: p for p in cmd.params}
    for f in fields(cls):
        if f.name in ("out", "data", "stats", "aug", "tuning"):  # the command's own arguments, or nested configs
            continue
        o, meta = options[f.name], f.metadata
        flag = f"--{meta.get('option', f.name).replace('_', '-')}"
        assert o.opts == [flag] and o.default == f.default and o.help.startswith(meta["help"]), f.name
        if "shown" in meta:  # the recipes' defaults
            assert o.help.endswith(f"[default: {meta['shown']}]")
        if isinstance(f.default, bool):  # both ways, so that a resume can turn it off or on
            off = "--" + meta.get("off", "no-" + flag[2:])
            assert o.secondary_opts == [off] and o.help.endswith(f"[default: {flag if f.default else off}]")
        if "choices" in meta:
            assert isinstance(o.type, click.Choice) and tuple(o.type.choices) == meta["choices"]
        for bound in ("min", "max", "min_open", "max_open"):
            if bound in meta:
                assert getattr(o.type, bound) == meta[bound], (f.name, bound)


def test_every_dali_knob_travels_by_its_name_to_the_run_and_the_loader():
    """Each Tuning field, given by name, lands in the run's DataConfig.tuning and in the Loader's Tuning; a name
    that is no knob is one line listing the knobs."""
    from dataclasses import fields

    from alexdata.loader import tuning_of
    from alexmodel.config import configs_from_options
    from pipelines.config import Tuning

    for f in fields(Tuning):
        value = f.default + (1 if isinstance(f.default, int) else 0.25)
        data_cfg = configs_from_options("data", "elsewhere", **{f.name: value})[0]
        assert getattr(data_cfg.tuning, f.name) == value and getattr(tuning_of(None, {f.name: value}), f.name) == value
    with pytest.raises(ConfigError, match="unknown Loader argument 'prefetchh': a DALI knob is one of prefetch, "):
        tuning_of(Tuning(), {"prefetchh": 3})
