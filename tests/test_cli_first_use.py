"""What a new user trips over, round two: a warmup that overshot its peak, a recipe's batch too big for
small data, data without a val split, a raw tree with a bad file, the preprocessing `alexmodel.load` leaves out,
class names, predict on a bad file or a folder, and messages that point the wrong way."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PREP, tiny
from PIL import Image

import cli
from alexdata.errors import DataError, PrepareError, TrainError
from alexmodel.config import OptimConfig, recipe, start_rules
from alexmodel.train import train


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()  # tiny() runs set 1 for this process
    yield
    torch.set_num_threads(n)


def _run(data_dir, out, **run):
    d, m, o, r = tiny(data_dir, out)
    return train(d, m, replace(o, warmup_epochs=0.5), replace(r, **run))


@pytest.fixture(scope="module")
def train_only(data, tmp_path_factory):
    """The prepared mini-ImageNet without its val split and with class names, as prepare records them; and a run
    trained on it with --no-val."""
    d = tmp_path_factory.mktemp("first_use") / "data"
    shutil.copytree(data, d)
    man = json.loads((d / "manifest.json").read_text())
    man["val"] = {"images": 0, "shards": []}
    man["class_names"] = [f"name of {w}" for w in man["classes"]]
    (d / "manifest.json").write_text(json.dumps(man))
    out = d.parent / "run"
    n = torch.get_num_threads()
    result = _run(d, out, validate=False)
    torch.set_num_threads(n)
    return d, out, result


# ---------------------------------------------------------------- 1. the warmup


def _schedule(o: OptimConfig, spe: int) -> list[float]:
    """The lr of every step of a cosine run, as the trainer sets it (alexmodel/schedule.py)."""
    from alexmodel.schedule import cosine_lr

    return [cosine_lr(o, spe, e * spe + i) for e in range(o.epochs) for i in range(spe)]


def test_warmup_never_passes_the_peak():
    # The case: 0.04 configured, a warmup of 2.5 steps gave 0.048 at its third step
    o = OptimConfig(recipe="modern", lr=0.04, epochs=2, schedule="cosine", warmup_epochs=0.5)
    assert _schedule(o, 5)[:3] == pytest.approx([0.016, 0.032, 0.04])
    for epochs in (1, 2, 3, 10):
        for spe in (1, 2, 3, 7, 16):
            for warmup in (0, 0.1, 0.25, 0.3, 0.5, 0.7, 1, 1.5, 2.5, 3.7, 5):
                o = start_rules(replace(o, epochs=epochs, warmup_epochs=warmup), say=False)  # capped at half
                lrs = _schedule(o, spe)
                ramp = [x for s, x in enumerate(lrs) if s < o.warmup_epochs * spe]
                assert max(lrs) == o.lr and min(lrs) > 0, (epochs, spe, warmup, lrs)
                assert ramp == sorted(ramp) and all(x <= o.lr for x in lrs), (epochs, spe, warmup, lrs)


def test_the_warmup_notice_is_rank_zeros_and_comes_only_once_the_run_starts(data, tmp_path, monkeypatch, capsys):
    import alexmodel.train as trainer
    from alexmodel import distributed

    asked = []
    real = trainer.start_notices
    monkeypatch.setattr(trainer, "start_notices", lambda *a: asked.append(a) or real(*a))
    for rank, calls in ((0, 1), (1, 0)):
        monkeypatch.setattr(distributed, "init", lambda *a, rank=rank: distributed.Dist(rank=rank))
        with pytest.raises(DataError):  # no data there: refused, and the notice the rules make is not said
            train(*tiny(tmp_path / "none", tmp_path / f"r{rank}"))
        assert len(asked) == calls and capsys.readouterr().err == ""
        asked.clear()
    monkeypatch.undo()

    def stop(epoch, step, images, labels):
        raise KeyboardInterrupt  # the run has started: its notices are out

    with pytest.raises(KeyboardInterrupt):
        train(*tiny(data, tmp_path / "ok"), on_step=stop)
    assert capsys.readouterr().err.count("--warmup-epochs 1 capped to 0.5") == 1


# ---------------------------------------------------------------- 2. small data


def test_a_recipe_batch_too_big_for_the_data_is_said(data, tmp_path):
    from alexmodel.config import few_steps_notice, small_data_batch

    modern = recipe("modern")[2]
    line = few_steps_notice(modern, 600, 2)
    assert "600 training images at the modern recipe's --batch-size 512 make 2 steps an epoch" in line
    assert "lr 0.04, set for 512" in line and "--batch-size 32" in line and "Small data" in line
    assert few_steps_notice(modern, 6000, 12) is None  # enough steps
    assert few_steps_notice(replace(modern, batch_size=256), 600, 3) is None  # a batch chosen by hand
    assert [small_data_batch(n) for n in (1, 46, 238, 1000, 10**6)] == [1, 4, 16, 64, 65536]
    d, m, o, r = tiny(data, tmp_path / "r", batch_size=64)
    with pytest.raises(TrainError, match=r"more than the 46 images .* try --batch-size 4 \(README: Small data\)"):
        train(d, m, o, r)


# ---------------------------------------------------------------- 3. --no-val


def test_train_only_data_needs_no_val_and_trains_with_it(train_only, tmp_path):
    d, out, result = train_only
    with pytest.raises(TrainError, match="has no val split.*--no-val") as e:
        _run(d, tmp_path / "r")
    assert "\n" not in str(e.value)
    dc, m, o, r = tiny(d, tmp_path / "p")
    _, _, paper = recipe("paper", batch_size=8, epochs=1)
    with pytest.raises(TrainError, match="--no-val: the plateau schedule"):
        train(dc, m, paper, replace(r, validate=False))
    (epoch,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epoch["val_top1"] is None and epoch["val_loss"] is None and 0 <= epoch["train_top1"] <= 1
    assert (out / "plot.png").is_file() and result["history"] == [epoch]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # the class names prepare found, kept
    assert saved["config"]["class_names"] == json.loads((d / "manifest.json").read_text())["class_names"]
    from alexmodel.config import configs_from_options

    assert configs_from_options(str(d), str(tmp_path / "c"), validate=False)[3].validate is False  # --no-val
    assert "--no-val" in CliRunner().invoke(cli.main, ["train", "--help"]).output


# ---------------------------------------------------------------- 4. a raw tree's bad files


def test_a_raw_tree_with_bad_files_is_refused_before_any_step(synth_tree, tmp_path):
    from alexdata.dataset import image_problem, open_split

    planted = json.loads((synth_tree / "synth.json").read_text())["oddities"]
    bad = {str(p): why for p in open_split(synth_tree, "train").files if (why := image_problem(p))}
    assert bad == {  # CMYK, grayscale and a PNG named .JPEG decode: DALI reads them
        str(synth_tree / planted["truncated"]): "a JPEG cut short (no end-of-image marker)",
        str(synth_tree / planted["empty"]): "empty file",
    }
    tree = tmp_path / "tree"
    shutil.copytree(synth_tree / "train", tree / "train")
    with pytest.raises(DataError, match=r"and 1 more: 2 of 48 files .* run `alexnet prepare") as e:
        _run(tree, tmp_path / "r", validate=False)
    assert "\n" not in str(e.value) and not (tmp_path / "r" / "checkpoint.pt").exists()


def test_ranks_check_their_shares_of_a_raw_tree_and_agree(synth_tree):
    """Under torchrun each rank reads every world-th file, not all of them; the gathered verdicts are the
    single-process check's, so every rank refuses with the same line."""
    from alexdata.dataset import check_images, image_problems, open_split

    split = open_split(synth_tree, "train")
    whole = image_problems(split, threads=1)
    assert len(whole) == 2 and all(split.files[i] == p for i, p, _ in whole)
    for world in (2, 3):
        shares = [image_problems(split, 1, rank, world) for rank in range(world)]
        assert sorted(p for share in shares for p in share) == whole
        assert all(i % world == rank for rank, share in enumerate(shares) for i, _, _ in share)
        with pytest.raises(DataError) as gathered:
            check_images(synth_tree, split, problems=[p for share in reversed(shares) for p in share])
        with pytest.raises(DataError) as alone:
            check_images(synth_tree, split, threads=1)
        assert str(gathered.value) == str(alone.value)


# ---------------------------------------------------------------- 5. the preprocessing


def test_loaded_preprocessing_is_the_eval_pipelines(data, synth_tree, train_only, tmp_path):
    """model.preprocess + model gives `alexnet predict`'s probabilities; for both recipes' augmentations the
    tensors are the DALI pipeline's (the decoder's pixels exactly; a resize a level or two of 255 on a few pixels)."""
    from alexdata.loader import Loader, resolve_stats
    from alexmodel import load
    from alexmodel.predict import predict
    from alexmodel.preprocess import Preprocess
    from pipelines.config import Split

    planted = {synth_tree / p for p in json.loads((synth_tree / "synth.json").read_text())["oddities"].values()}
    good = [p for p in sorted((synth_tree / "train").rglob("*.JPEG")) if p not in planted][:3]
    im = Image.open(good[0]).convert("RGB")
    w, h = im.size
    small = im.resize((round(w * 256 / min(w, h)), round(h * 256 / min(w, h))))  # the shorter side 256 already
    small.save(tmp_path / "s.png")
    small.crop((0, 0, 300, 256)).save(tmp_path / "odd.png")  # an odd margin: how the centre crop rounds
    files = [tmp_path / "s.png", tmp_path / "odd.png", *good]

    _, run, _ = train_only
    model, classes, _ = load(run)
    got = predict(run, files, device="cpu", threads=1, top=len(classes))
    with torch.no_grad():
        mine = model(model.preprocess([Image.open(f) for f in files])).softmax(1)
    for g, p, f in zip(got, mine, files):
        exact = f.suffix == ".png"
        assert max(abs(dict(g["top"])[c] - float(p[i])) for i, c in enumerate(classes)) < (1e-6 if exact else 1e-3)

    stats = resolve_stats(None, data)
    split = Split("files", ("a",), len(files), files=tuple(map(str, files)), labels=(0,) * len(files))
    for aug in (recipe("modern")[1], recipe("paper")[1]):
        loader = Loader("x", split="val", mode="center", opened=split, stats=stats, aug=aug, batch_size=8, threads=1)
        dali = next(iter(loader))[0] * torch.tensor(stats.std_255 if aug.divide_std else (1, 1, 1))[:, None, None]
        ours = Preprocess.of(stats, aug)([Image.open(f) for f in files])
        ours = ours * torch.tensor(stats.std_255 if aug.divide_std else (1, 1, 1))[:, None, None]  # 0-255 levels
        assert torch.allclose(ours[:2], dali[:2], atol=1e-3), aug  # no resize: the same pixels
        assert (ours - dali).abs().max() <= 4 and ((ours - dali).abs() > 1e-3).float().mean() < 0.01, aug
    pre, arr = Preprocess.of(stats, recipe("modern")[1]), np.array(Image.open(files[2]).convert("RGB"))
    one = pre(Image.open(files[2]))
    assert one.shape == (3, 227, 227) and torch.equal(one, pre(torch.from_numpy(arr)))  # HWC
    assert torch.equal(one, pre(torch.from_numpy(arr).permute(2, 0, 1))) and torch.equal(one, pre(arr))  # CHW
    with pytest.raises(ValueError, match="expected uint8"):
        pre(torch.zeros(4, 5))


# ---------------------------------------------------------------- 6. class names


@pytest.mark.parametrize("layout, source", [("kaggle", "LOC_synset_mapping.txt"), ("archives", "meta.mat")])
def test_prepare_records_class_names(layout, source, tmp_path):
    from alexdata.errors import plural
    from alexdata.prepare import prepare
    from alexdata.synth import SynthConfig, make_synth

    raw = tmp_path / "raw"
    make_synth(raw, SynthConfig(2, 2, 1, oddities=False, layout=layout, test_images=1), workers=1, progress=False)
    lines = []
    man = prepare(raw, tmp_path / "out", PREP, workers=1, progress=False, log=lines.append)
    assert man["class_names"] == [f"synthetic class {w}" for w in man["classes"]], source
    test_notes = [x for x in lines if "unlabelled test" in x]  # Kaggle's test/: said once, in the summary
    assert test_notes == ([lines[-1]] if layout == "kaggle" else [])
    assert layout != "kaggle" or "(1 unlabelled test image);" in lines[-1]
    assert "with 1 worker;" in lines[-1] and lines[0].startswith("prepare: 2 classes")
    assert (plural(1, "shard"), plural(2, "class", "classes")) == ("1 shard", "2 classes")


# ---------------------------------------------------------------- 7. predict on bad files and folders


def test_predict_reports_bad_files_and_reads_folders(train_only, tmp_path):
    _, run, _ = train_only
    folder = tmp_path / "photos"
    (folder / "deeper").mkdir(parents=True)
    Image.new("RGB", (300, 260), (90, 120, 40)).save(folder / "a.png")
    Image.new("RGB", (256, 280), (30, 60, 200)).save(folder / "deeper" / "b.JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    cut = tmp_path / "cut.JPEG"
    cut.write_bytes((folder / "deeper" / "b.JPEG").read_bytes()[:-300])
    r = CliRunner().invoke(
        cli.main, ["predict", "--checkpoint", str(run), str(folder), str(cut), str(tmp_path / "gone.png"), "--json"]
    )
    assert r.exit_code == 1, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in rows] == [str(folder / "a.png"), str(folder / "deeper" / "b.JPEG")]
    assert all(t["name"] == f"name of {t['class']}" for x in rows for t in x["top"])  # prepare's class names
    assert r.stderr.splitlines() == [
        f"predict: {folder / 'empty.jpg'}: empty file",
        f"predict: {cut}: a JPEG cut short (no end-of-image marker)",
        f"predict: {tmp_path / 'gone.png'}: no such file",
    ]


# ---------------------------------------------------------------- 8. messages


def test_messages_point_the_right_way(prepared, synth_tree, data, tmp_path):
    from alexdata.dataset import open_split
    from alexdata.prepare import prepare
    from alexdata.verify import verify

    hf = tmp_path / "hf"
    (hf / "data").mkdir(parents=True)
    (hf / "data" / "train_images_0.tar.gz").write_bytes(b"")
    kaggle = tmp_path / "kaggle"
    (kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train" / "n01440764").mkdir(parents=True)
    for root, name in ((hf, "Hugging Face"), (kaggle, "Kaggle")):
        with pytest.raises(DataError, match=f"looks like a raw {name} download: run `alexnet prepare {root} OUT`"):
            open_split(root, "train")
    with pytest.raises(PrepareError, match=r"missing and .*raw ImageNet: did you swap SRC and OUT\?"):
        prepare(tmp_path / "new", synth_tree, PREP, progress=False, log=lambda *a: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=r"empty and .*did you swap SRC and OUT\?"):
        prepare(tmp_path / "empty", kaggle, PREP, progress=False, log=lambda *a: None)
    half = tmp_path / "half"
    shutil.copytree(prepared, half)
    (half / "manifest.json").unlink()
    with pytest.raises(DataError, match="prepare has not finished"):
        verify(half, quick=True)
    with pytest.raises(TrainError, match=r"--out .* is inside DATA .*: choose a run directory outside"):
        train(*tiny(data, data / "run"))
    assert not (data / "run").exists()
    one = tmp_path / "one"
    shutil.copytree(prepared, one)
    man = json.loads((one / "manifest.json").read_text())
    (one / man["val"]["shards"][0]["file"]).unlink()
    r = CliRunner().invoke(cli.main, ["verify", str(one), "--quick"])
    assert r.exit_code == 1 and r.stdout.splitlines()[-1].startswith("verify: 1 bad file; checked sizes of 16 files")


def test_bench_loader_help_says_how_long_it_runs():
    r = CliRunner().invoke(cli.main, ["bench", "loader", "--help"])
    assert "3 contenders x --rounds x this (90 s by default)" in " ".join(r.output.split())
