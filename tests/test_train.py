"""The trainer on tiny data and a 1/16-width AlexNet on the CPU: the run record, learning, exact resume after
SIGKILL, data parallelism under torchrun/gloo, bad states, and ten-crop evaluation against a direct computation."""

import json
import math
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import ENV, TINY, WIDTH, limit, run_cli, tiny

from alexdata.statsfile import write_stats
from alexmodel.config import COMPAT_KEYS, DataConfig, OptimConfig, RunConfig, recipe
from alexmodel.evaluate import evaluate_checkpoint
from alexmodel.train import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_recipes_have_the_papers_defaults():
    _, aug, paper = recipe("paper")
    assert (
        paper.batch_size,
        paper.lr,
        paper.momentum,
        paper.weight_decay,
        paper.epochs,
        paper.schedule,
        paper.plateau_factor,
    ) == (128, 0.01, 0.9, 5e-4, 90, "plateau", 0.1)
    assert aug.pca_std == 0.1 and not aug.divide_std
    model, _, modern = recipe("modern", batch_size=1024)
    assert model.init == "modern" and modern.schedule == "cosine" and modern.lr == pytest.approx(0.01 * 1024 / 128)
    assert recipe("paper", batch_size=256)[2].lr == 0.01  # the paper's recipe does not rescale
    with pytest.raises(ValueError, match="warmup_epochs"):
        OptimConfig(warmup_epochs=1.0)  # plateau schedule
    with pytest.raises(ValueError, match="batch_size=0"):
        OptimConfig(batch_size=0)


def test_one_epoch_leaves_config_metrics_and_plot(one_epoch, data):
    cfg = json.loads((one_epoch / "config.json").read_text())
    assert cfg["config"]["model"] == {"num_classes": 3, "width": WIDTH, "init": "modern"}
    assert cfg["config"]["optim"]["batch_size"] == 8 and cfg["config"]["run"]["device"] == "cpu"
    assert len(cfg["revision"]) == 40 or cfg["revision"] == "unknown"
    lines = (one_epoch / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    assert m["epoch"] == 1 and m["step"] == math.ceil(46 / 8)
    for k in ("train_top1", "val_top1", "val_top5", "data_wait_frac"):
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert m["val_top5"] == 1.0  # 3 classes: the top 5 hold them all
    assert m["train_loss"] > 0 and m["val_loss"] > 0 and m["lr"] > 0 and m["images_per_s"] > 0
    assert (one_epoch / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (one_epoch / "checkpoint.pt").is_file() and not list(one_epoch.glob("*.tmp"))


def test_loss_goes_down_and_the_loaders_end_inside_train(data, tmp_path, monkeypatch):
    """The loss falls over 3 epochs. The run's DALI pipelines end inside train(), not at interpreter exit (DALI's
    teardown there once aborted a torchrun rank that had finished)."""
    import gc
    import weakref

    from alexdata.loader import Loader

    made, real = [], Loader.__init__

    def recorded(self, *a, **kw):
        made.append(weakref.ref(self))
        real(self, *a, **kw)

    monkeypatch.setattr(Loader, "__init__", recorded)
    gc.disable()  # no collection by chance: only train's own
    try:
        h = train(*tiny(data, tmp_path / "run", epochs=3, lr=0.02))["history"]
        alive = [r for r in made if r() is not None]
    finally:
        gc.enable()
    assert len(made) == 2 and not alive  # train and val
    assert [m["epoch"] for m in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 0.05, [m["train_loss"] for m in h]


KILL_SCRIPT = r"""
import json, os, signal, sys
from dataclasses import replace
import torch
from alexmodel.train import train
from conftest import tiny

data, out, log, kill_at, every, resume = sys.argv[1:7]
def on_step(epoch, step, images, labels):
    with open(log, "a") as f:
        f.write(json.dumps({"epoch": epoch, "step": step, "labels": labels.tolist(),
                            "pixels": float(images.double().sum())}) + "\n")
    if step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as if the machine died
r = train(*tiny(data, out, epochs=2, checkpoint_every=int(every)), resume=resume == "1", on_step=on_step)
torch.save(r["model"].state_dict(), os.path.join(out, "final.pt"))
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(data, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    steps = math.ceil(46 / 8)  # per epoch
    every, kill_at = steps + 2, steps + 3  # a checkpoint at the 2nd step of epoch 2; killed one step later
    cmd = lambda out, log, kill, resume: [
        sys.executable,
        str(script),
        str(data),
        str(tmp_path / out),
        str(tmp_path / log),
        str(kill),
        str(every),
        resume,
    ]
    ref = subprocess.Popen(cmd("ref", "ref.jsonl", -1, "0"), env=ENV, stderr=subprocess.PIPE, text=True)
    killed = subprocess.run(
        cmd("run", "killed.jsonl", kill_at, "0"), env=ENV, capture_output=True, text=True, timeout=limit(300)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _, err = ref.communicate(timeout=limit(300))  # read as it goes: a full stderr pipe would block the run forever
    assert ref.returncode == 0, err
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["meter"]["steps"]) == (1, steps + 2, 2)  # mid-epoch
    resumed = subprocess.run(
        cmd("run", "resumed.jsonl", -1, "1"), env=ENV, capture_output=True, text=True, timeout=limit(300)
    )
    assert resumed.returncode == 0, resumed.stderr

    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
    ref_log, killed_log, resumed_log = read("ref.jsonl"), read("killed.jsonl"), read("resumed.jsonl")
    assert len(ref_log) == 2 * steps
    assert killed_log == ref_log[:kill_at]
    assert resumed_log == ref_log[every:]  # the same batches (labels and pixels) from the checkpoint on
    a = torch.load(tmp_path / "ref" / "final.pt")
    b = torch.load(tmp_path / "run" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("epoch", "step", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
    ma = [{k: m[k] for k in keys} for m in map(json.loads, (tmp_path / "ref" / "metrics.jsonl").open())]
    mb = [{k: m[k] for k in keys} for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())]
    assert ma == mb and len(ma) == 2


DDP_SCRIPT = r"""
import hashlib, json, os, sys
from alexmodel.train import train
from conftest import tiny

data, out, logs = sys.argv[1:4]
seen = {}
def on_step(epoch, step, images, labels):
    seen.setdefault(epoch, []).extend(labels.tolist())
r = train(*tiny(data, out, epochs=2, batch_size=4), on_step=on_step)  # 2 images per rank and step
sd = r["model"].state_dict()
digest = hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()
with open(os.path.join(logs, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"seen": seen, "weights": digest, "world": int(os.environ["WORLD_SIZE"])}, f)
"""


@pytest.mark.slow
def test_ddp_two_ranks_gloo_cover_the_epoch_disjointly_and_agree(one_label_per_image, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(one_label_per_image),
            str(tmp_path / "run"),
            str(tmp_path),
        ],
        env={**ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=limit(300),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(x["world"] == 2 for x in ranks)
    for epoch in ("0", "1"):
        a, b = (x["seen"][epoch] for x in ranks)
        assert len(a) == len(b) == 8  # global batch 4 = 2 per rank, 4 steps each
        assert not set(a) & set(b), f"epoch {epoch}: both ranks saw {set(a) & set(b)}"
        assert sorted(a + b) == list(range(16))  # together: every image once
    assert ranks[0]["weights"] == ranks[1]["weights"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["world_size"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "nan"
    r = run_cli("train", data, "--out", out, "--epochs", 1, "--lr", 1e6, "--checkpoint-every", 1, *TINY, check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    # Which comes first, a NaN loss or an update that overflows the weights, depends on the batches drawn
    diverged = "loss is nan" in lines[0] or "the weights hold NaN/inf" in lines[0]
    assert len(lines) == 1 and diverged and "kept the last good checkpoint" in lines[0], r.stderr
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] >= 1 and f"step {ckpt['step']})" in lines[0]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_incompatible_resume_is_one_line(one_epoch, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    for opt, value, key in (("--width", 0.125, "model.width"), ("--batch-size", 16, "optim.batch_size")):
        r = run_cli("train", data, "--out", run, "--resume", opt, value, check=False)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot resume {run / 'checkpoint.pt'}: {key} is" in lines[0], r.stderr
    r = run_cli("train", data, "--out", run, *TINY, check=False)  # a fresh run into a used directory
    assert r.returncode == 1 and "already holds a run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Options not given on a resume are the run's own: only the longer schedule is new.
    run_cli("train", data, "--out", run, "--resume", "--epochs", 2)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_option_rules_are_the_librarys(one_epoch, data, capsys):
    """What `alexnet train` does with its options, a Python caller gets too: a resume's options not given are the
    run's own, a fresh run's the recipe's; a fresh run caps the warmup and says the paper recipe's lr."""
    from alexmodel.config import configs_from_options, start_rules

    d, m, o, r = configs_from_options(str(data), str(one_epoch), resume=True, epochs=2, threads=2)
    saved = json.loads((one_epoch / "config.json").read_text())["config"]
    assert o == replace(OptimConfig(**saved["optim"]), epochs=2) and m.width == WIDTH and r.out == str(one_epoch)
    assert d.stats is None and d.threads == 2 and r.torch_threads == 1  # the checkpoint's statistics; --threads
    d, m, o, r = configs_from_options(str(data), "elsewhere", recipe="modern", epochs=1, momentum=0.8)
    assert (o.recipe, o.epochs, o.momentum, o.warmup_epochs, m.init, r.device) == (
        "modern",
        1,
        0.8,
        5.0,
        "modern",
        "auto",
    )
    assert start_rules(o).warmup_epochs == 0.5 and "capped to 0.5" in capsys.readouterr().err
    # A resume asking what the run was started with: the warmup the cap made of it then, whatever the epochs now
    assert start_rules(replace(o, epochs=4), {"epochs": 1, "warmup_epochs": 0.5}).warmup_epochs == 0.5
    paper = configs_from_options(str(data), "elsewhere", batch_size=16)[2]
    assert start_rules(paper) == paper and "--lr 0.00125" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        configs_from_options(str(data), "elsewhere", epoch=3)


def test_a_negative_seed_is_one_line():
    """numpy's seed (build_net) takes no negative number, and DALI's -1 means "draw one": refused up front."""
    from alexdata.errors import ConfigError

    with pytest.raises(ConfigError, match="seed=-1: expected an int >= 0"):
        RunConfig(seed=-1)


def test_compat_keys_cover_the_optimiser_but_not_epochs_or_lr():
    assert {"optim.batch_size", "optim.schedule", "optim.momentum", "model.width"} <= set(COMPAT_KEYS)
    assert not {"optim.epochs", "optim.lr", "run.precision", "world_size"} & set(COMPAT_KEYS)
    speed_only = {"data.threads", "data.tuning", "run.tf32", "run.fused_sgd"}
    assert not speed_only & set(COMPAT_KEYS)  # a resume may change them


def test_paper_recipe_checkpoint_carries_the_mean_image(data, tmp_path):
    """The paper recipe subtracts the mean image (§2); its checkpoint keeps it (a tensor, not in config.json),
    so evaluate and `alexmodel.load` use the image the run trained with, whatever stats.json holds later."""
    from alexdata.statsfile import load_stats
    from alexmodel import load

    model, aug, optim = recipe("paper", width=WIDTH, batch_size=8, epochs=1)
    assert aug.mean == "pixel" and aug.central_square
    out = tmp_path / "run"
    train(
        DataConfig(str(data), threads=1, aug=aug),
        model,
        optim,
        RunConfig(out=str(out), device="cpu", torch_threads=1, progress=False),
    )
    image = load_stats(data / "stats.json")["mean_image"].astype(np.float32)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert torch.equal(saved["mean_image_255"], torch.from_numpy(image))
    assert (out / "config.json").stat().st_size < 100_000
    assert np.array_equal(load(out)[2].mean_image_255, image)
    other = {**json.loads((data / "stats.json").read_text()), "mean_image": np.zeros((256, 256, 3))}
    write_stats(other, tmp_path / "other.json")  # the same statistics but another mean image
    score = lambda **kw: evaluate_checkpoint(data, out, device="cpu", threads=1, **kw)["loss"]
    kept = score()
    assert kept == score(stats=data / "stats.json") and kept != score(stats=tmp_path / "other.json")


def test_a_checkpoint_of_an_older_version_is_refused_in_one_line(one_epoch, data, tmp_path):
    """Its config lacks a field this version writes (here the augmentation's `mean`, added with the mean image):
    evaluate and a resume refuse it whole, rather than guess the field's value."""
    from alexdata.errors import TrainError

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["data"]["aug"]["mean"]
    torch.save(ckpt, run / "checkpoint.pt")
    why = r"config\.data\.aug\.mean is missing: a checkpoint of an older version of this project"
    with pytest.raises(TrainError, match=why):
        evaluate_checkpoint(data, run, device="cpu", threads=1)
    with pytest.raises(TrainError, match=why):
        train(*tiny(data, run, epochs=2), resume=True)


def test_ten_crop_is_the_mean_softmax_of_the_ten_views(one_epoch, data):
    from alexdata.loader import Loader
    from alexmodel.model import AlexNet
    from pipelines.config import AugmentConfig, PipelineStats

    got = evaluate_checkpoint(data, one_epoch / "checkpoint.pt", ten_crop=True, device="cpu", batch_size=5, threads=1)
    saved = torch.load(one_epoch / "checkpoint.pt", weights_only=False)
    net = AlexNet(3, width=WIDTH, init="modern")
    net.load_state_dict(saved["model"])
    net.eval()
    cfg = saved["config"]
    loader = Loader(
        data,
        split="val",
        mode="tencrop",
        stats=PipelineStats(**cfg["stats_255"]),
        aug=AugmentConfig(**cfg["data"]["aug"]),
        batch_size=4,
        threads=1,
    )
    probs, labels = [], []
    with torch.no_grad():
        for images, y in loader:  # (B, 10, 3, 227, 227): each view through the net on its own
            views = [torch.softmax(net(images[:, v]), -1).double().numpy() for v in range(10)]
            probs.append(np.mean(views, axis=0))  # (B, classes)
            labels.append(y.numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    assert got["images"] == len(y) == 12
    assert got["top1"] == np.mean(p.argmax(1) == y)
    assert got["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-5)
    centre = evaluate_checkpoint(data, one_epoch / "checkpoint.pt", device="cpu", threads=1)
    assert centre["loss"] != pytest.approx(got["loss"], rel=1e-6)  # the views do change the prediction

    r = run_cli(
        "evaluate",
        data,
        "--checkpoint",
        one_epoch / "checkpoint.pt",
        "--ten-crop",
        "--json",
        "--device",
        "cpu",
        "--threads",
        1,
    )
    cli = json.loads(r.stdout)
    assert cli["top1"] == got["top1"] and cli["loss"] == pytest.approx(got["loss"], rel=1e-6)


def test_bad_device_options_are_one_line(data, tmp_path):
    r = run_cli("train", data, "--out", tmp_path / "a", *TINY, "--precision", "fp16", check=False)
    assert r.returncode == 1 and "fp16 needs a GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        r = run_cli("train", data, "--out", tmp_path / "b", "--device", "gpu", check=False)
        assert r.returncode == 1 and "no CUDA GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "precision,channels_last,compile",
    [("fp32", False, False), ("bf16", True, False), ("fp16", True, False), ("bf16", True, True)],
)
def test_gpu_epoch(data, tmp_path, precision, channels_last, compile):
    d, m, o, r = tiny(data, tmp_path / "run", epochs=2)
    r = replace(
        r,
        device="gpu",
        torch_threads=None,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        checkpoint_every=3,
    )
    h = train(d, m, o, r)["history"]
    assert len(h) == 2 and all(math.isfinite(x["train_loss"]) for x in h)
    ev = evaluate_checkpoint(data, tmp_path / "run" / "checkpoint.pt", device="gpu", ten_crop=True)
    assert ev["images"] == 12


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_steps_never_wait_for_the_device(data, precision):
    """Between window ends the host only queues work: steps 2.. of an epoch, the Loader's batches included, run
    under torch.cuda.set_sync_debug_mode("error"), which raises at any call that waits for the device. fp16 as
    the trainer runs it: GradScaler with fused SGD, which skips an inf step on the device."""
    from alexdata.loader import Loader
    from alexmodel.loop import train_one_epoch
    from alexmodel.model import AlexNet

    # drop_last: one shape, so no cuDNN autotuning (cudnn.benchmark, set by an earlier run) on a partial batch
    loader = Loader(data, batch_size=8, device="gpu", threads=2, drop_last=True)
    model = AlexNet(3, width=WIDTH).cuda()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True if precision == "fp16" else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    def strict():
        for i, batch in enumerate(loader):
            if i == 1:  # after the first step's lazy initialisation (cuBLAS handles, the optimizer's state)
                torch.cuda.set_sync_debug_mode("error")
            yield batch
        torch.cuda.set_sync_debug_mode("default")  # the epoch's closing read of the sums waits, by design

    try:
        meter = train_one_epoch(model, opt, strict(), precision=precision, scaler=scaler, log_every=10**6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert meter.steps == len(loader) == 5 and meter.host_syncs == 1 and meter.images == 40


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_tower_placement_on_two_gpus(data, tmp_path):
    d, m, o, r = tiny(data, tmp_path / "run", epochs=1)
    h = train(d, m, o, replace(r, device="gpu", torch_threads=None, placement="two-tower"))["history"]
    assert math.isfinite(h[0]["train_loss"])
    ev = evaluate_checkpoint(data, tmp_path / "run" / "checkpoint.pt", device="gpu")  # loads on one device
    assert ev["top1"] == pytest.approx(h[0]["val_top1"])


def test_bad_data_is_one_line(tmp_path):
    from alexdata.dataset import DataError

    with pytest.raises(DataError, match="no such directory") as e:
        train(*tiny(tmp_path / "missing", tmp_path / "run"))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_them(tmp_path):
    from alexmodel.tools.demo import DemoConfig, run_demo

    cfg = DemoConfig(classes=3, train_per_class=6, val_per_class=2, width=WIDTH, epochs=1, batch_size=6)
    r = run_demo(tmp_path / "demo", cfg, device="cpu", log=lambda *a: None)
    assert r["val_images"] == 6 and 0 <= r["val_top1"] <= 1 and 0 <= r["ten_crop_top1"] <= 1
    assert len((tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    steps = [json.loads(x) for x in (tmp_path / "demo" / "run" / "steps.jsonl").read_text().splitlines()]
    epoch = json.loads((tmp_path / "demo" / "run" / "metrics.jsonl").read_text())
    assert steps and steps[-1]["step"] == epoch["step"] and steps[-1]["epoch"] == 1.0
    assert all(x["steps"] <= cfg.log_every for x in steps)
    ckpt = tmp_path / "demo" / "run" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = run_demo(tmp_path / "demo", cfg, device="cpu", log=lambda *a: None)  # every stage already done
    assert again["val_top1"] == r["val_top1"] and ckpt.stat().st_mtime_ns == stamp  # nothing retrained
    longer = run_demo(tmp_path / "demo", replace(cfg, epochs=2), device="cpu", log=lambda *a: None)  # the hint's
    assert len((tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # --epochs: one more
    assert ckpt.stat().st_mtime_ns != stamp and 0 <= longer["val_top1"] <= 1


def test_an_empty_last_batch_steps_without_nan():
    """A data-parallel rank whose shard is one image shorter can get an empty last batch (alexdata/loader.py)."""
    from alexmodel.loop import train_one_epoch
    from alexmodel.model import AlexNet

    torch.manual_seed(0)
    model = AlexNet(3, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [
        (torch.randn(2, 3, 227, 227), torch.tensor([0, 2])),
        (torch.zeros(0, 3, 227, 227), torch.zeros(0, dtype=torch.int64)),
    ]
    meter = train_one_epoch(model, opt, batches)
    assert meter.steps == 2 and meter.images == 2 and math.isfinite(meter.loss_sum)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_loader_position_from_another_pipeline_resumes_at_the_epoch_boundary(one_epoch, data, tmp_path, capsys):
    """DALI names a graph's operators: a loader position saved by another version of the pipeline cannot be
    taken up, so the run says so in one line and goes on from the next epoch boundary with a fresh loader."""
    from alexdata.loader import Loader

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    other = Loader(data, mode="center", batch_size=8, threads=1).state_dict()["dali"]  # another graph
    ckpt["ranks"][0]["loader"]["dali"] = other
    torch.save(ckpt, run / "checkpoint.pt")
    data_cfg, model, optim, run_cfg = tiny(data, run, epochs=2)
    h = train(data_cfg, model, replace(optim, warmup_epochs=0.5), run_cfg, resume=True)["history"]  # as TINY
    assert [m["epoch"] for m in h] == [1, 2]
    assert "does not load here" in capsys.readouterr().err


def test_torch_threads_default_to_the_ranks_share_and_a_busy_machine_is_named(data, tmp_path, monkeypatch, capsys):
    import alexmodel.train as trainer

    monkeypatch.setattr(trainer.host, "cores", lambda: 2)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    assert trainer.busy_notice() == (
        "train: this machine is busy (load 6.0 on 2 cores): CPU training may go several times faster with "
        "--torch-threads 1"
    )
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (2.9, 2.0, 2.0))
    assert trainer.busy_notice() is None  # up to one job more than the cores: a normal machine

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # as torch's default on a node of 2 cores
        monkeypatch.setattr(trainer.host, "cores_per_rank", lambda: 1)  # a quota (or a second rank) leaves one
        d, m, o, r = tiny(data, tmp_path / "run")
        train(d, m, o, replace(r, torch_threads=None))
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(trainer.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
        train(d, m, replace(o, epochs=2), replace(r, torch_threads=None), resume=True)
        err = capsys.readouterr().err
        assert "this machine is busy (load 9.0 on 2 cores)" in err
        assert f"train: resumed {tmp_path / 'run'} after step 6, at the start of epoch 2/2" in err  # 46 images / 8
    finally:
        torch.set_num_threads(saved)


def test_the_live_bar_shows_the_window_so_far_before_it_ends(monkeypatch):
    from alexmodel import loop
    from alexmodel.model import AlexNet

    class Bar:
        def __init__(self):
            self.posts, self.steps = [], 0

        def set_postfix(self, refresh=True, **kw):
            self.posts.append((self.steps, kw))

        def update(self, n=1):
            self.steps += n

    monkeypatch.setattr(loop, "BAR_PEEK_S", 0.0)  # a slow window: every step is past the interval
    torch.manual_seed(0)
    model = AlexNet(3, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(2, 3, 227, 227), torch.tensor([0, 1])) for _ in range(3)]
    bar = Bar()
    meter = loop.train_one_epoch(model, opt, batches, bar=bar, log_every=100)  # one window: the epoch
    assert [s for s, _ in bar.posts] == [0, 1, 2, 3]  # the window so far after each step, then the window's end
    assert all(set(kw) == {"loss", "top1", "lr", "img_s", "wait"} for _, kw in bar.posts)
    assert bar.posts[-2][1]["loss"] == bar.posts[-1][1]["loss"] == f"{meter.loss_sum / meter.images:.3f}"
    monkeypatch.setattr(loop, "BAR_PEEK_S", 1e9)  # a fast window: its end only
    bar = Bar()
    loop.train_one_epoch(model, opt, batches, bar=bar, log_every=100)
    assert [s for s, _ in bar.posts] == [3]


def test_a_refused_run_says_every_problem_at_once_and_no_notice(prepared, tmp_path, capsys):
    from alexdata.errors import StatsMissing, TrainError

    model, aug, optim = recipe("paper", width=WIDTH, batch_size=64, epochs=1)  # notice-worthy: paper lr at 64
    run = RunConfig(out=str(tmp_path / "run"), device="cpu", progress=False)
    with pytest.raises(TrainError) as e:  # prepared: 46 train images and no stats.json
        train(DataConfig(str(prepared), threads=1, aug=aug), model, optim, run)
    assert str(e.value).startswith("--batch-size 64 is more than the 46 images of ")
    assert f"; and {prepared / 'stats.json'}: no stats file; run `alexnet stats {prepared}`" in str(e.value)
    assert capsys.readouterr().err == "" and not (tmp_path / "run").exists()  # no notice, no empty --out
    with pytest.raises(StatsMissing):  # the stats alone: its own error (the CLI adds "or pass --stats FILE")
        train(DataConfig(str(prepared), threads=1, aug=aug), model, replace(optim, batch_size=8), run)
    assert capsys.readouterr().err == ""


def test_a_config_file_then_the_options_on_top(one_epoch, data, tmp_path):
    from alexdata.errors import ConfigError
    from alexmodel.config import configs_from_options

    out = str(tmp_path / "again")
    ran = configs_from_options(str(data), str(one_epoch), resume=True)  # the run's own configs
    same = configs_from_options(str(data), out, config=one_epoch)  # its run directory as --config
    # the same configs, but --out, and the class count, which the data gives (1000 here is a placeholder)
    assert same == (ran[0], replace(ran[1], num_classes=1000), ran[2], replace(ran[3], out=out))
    longer = configs_from_options(str(data), out, config=one_epoch / "config.json", epochs=3, lr=0.5)
    assert longer[2] == replace(ran[2], epochs=3, lr=0.5) and longer[1] == same[1]
    recipe_file = tmp_path / "recipe.json"  # a few fields; the rest the recipe's, as on a command line
    recipe_file.write_text(
        json.dumps(
            {
                "optim": {"recipe": "modern", "batch_size": 8, "warmup_epochs": 0.5},
                "model": {"width": WIDTH},
                "data": {"threads": 1, "aug": {"flip_prob": 0.25}},
                "run": {"torch_threads": 1},
            }
        )
    )
    by_file = configs_from_options(str(data), out, config=recipe_file, epochs=2)
    by_options = configs_from_options(
        str(data),
        out,
        recipe="modern",
        batch_size=8,
        warmup_epochs=0.5,
        width=WIDTH,
        threads=1,
        torch_threads=1,
        epochs=2,
    )
    assert by_file[1:] == by_options[1:] and by_file[2].lr == 0.01 * 8 / 128  # modern's linear lr at batch 8
    assert by_file[0] == replace(by_options[0], aug=replace(by_options[0].aug, flip_prob=0.25))
    for bad, why in (
        ({"optim": {"bacth_size": 8}}, "optim.bacth_size is no field of OptimConfig"),
        ({"data": {"aug": {"flip": 1}}}, "data.aug.flip is no field of AugmentConfig"),
        ({"optim": {"epochs": 0}}, "epochs=0: expected an int >= 1"),
        ({"optim": []}, "expected a JSON object of sections data, model, optim, run"),
        ({"data": {"tuning": {"prefetch": 0}}}, "data.tuning: prefetch must be an int >= 1"),
        ({"data": {"tuning": {"prefetchh": 3}}}, "data.tuning.prefetchh is no field of Tuning"),
        ({"data": {"prefetch": 3}}, "data.prefetch is no field of DataConfig"),  # the older flat layout
    ):
        recipe_file.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=re.escape(why)):
            configs_from_options(str(data), out, config=recipe_file)
    tuned = tmp_path / "tuned.json"  # the DALI knobs as config.json records them
    tuned.write_text(json.dumps({"data": {"tuning": {"prefetch": 3, "hw_decoder_load": 0.9}}}))
    t = configs_from_options(str(data), out, config=tuned, hybrid_huffman_threshold=0)[0].tuning
    assert (t.prefetch, t.hw_decoder_load, t.hybrid_huffman_threshold, t.gpu_cache_gb) == (3, 0.9, 0, 0.0)
    older = tmp_path / "older"  # a run directory whose config.json keeps the DALI knobs flat in data
    older.mkdir()
    cfg = json.loads((one_epoch / "config.json").read_text())
    inner = cfg.get("config", cfg)
    inner["data"].update(prefetch=inner["data"].pop("tuning")["prefetch"])
    (older / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.data\.tuning is missing: a run of an older version"):
        configs_from_options(str(data), str(older), resume=True)
    with pytest.raises(ConfigError, match="--recipe with --config"):
        configs_from_options(str(data), out, config=one_epoch, recipe="paper")
    with pytest.raises(ConfigError, match="--config with --resume"):
        configs_from_options(str(data), str(one_epoch), config=one_epoch, resume=True)
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        configs_from_options(str(data), out, config=tmp_path / "missing.json")
    r = run_cli("train", data, "--out", out, "--config", one_epoch, "--epochs", 1, "--width", "0.125", check=False)
    assert (
        r.returncode == 0
        and json.loads((tmp_path / "again" / "config.json").read_text())["config"]["model"]["width"] == 0.125
    )  # the CLI's option on top of the file's
