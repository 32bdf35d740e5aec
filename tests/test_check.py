"""`alexnet check`: the whole acceptance run, rehearsed on the CPU so it cannot rot between GPU sessions."""

import json
import math
import time

import pytest
from conftest import limit, run_cli

from alexmodel.tools import check, check_stages
from alexmodel.tools.check import STAGES, run_check
from alexmodel.tools.check_stages import CheckSize, Context, StageTimeout, stage_tests

TINY = check.SIZES["tiny"]


def _quiet(*a):
    pass


@pytest.mark.slow  # ~1 minute on 2 cores: every stage for real, through the command line
def test_check_tiny_on_the_cpu_runs_every_stage(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    r = run_cli("check", "--device", "cpu", "--size", "tiny", "--out", out, "--work", work, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "check.json").read_text())
    assert list(rep["stages"]) == list(STAGES)
    assert {n: s["status"] for n, s in rep["stages"].items()} == {n: "ok" for n in STAGES}
    m = rep["machine"]
    assert m["device"] == "cpu" and m["cores"] >= 1 and m["torch"] and m["dali"] and m["python"] and m["date"]
    assert rep["result_name"] == f"cpu{m['cores']}-{m['date'][:10]}-tiny.json"
    st = rep["stages"]
    for name, s in st.items():
        assert 0 < s["seconds"] <= s["time_box_s"] + 60, name  # a box is kept between measurements
        assert f"check {name}: ok" in r.stdout

    d = st["data"]
    assert d["synth_images"] == TINY.classes * (TINY.train_per_class + TINY.val_per_class)  # oddities counted in
    assert d["classes"] == TINY.classes and d["train_images"] + d["val_images"] + d["skipped"] == d["synth_images"]
    assert min(d["synth_img_s"], d["prepare_img_s"], d["stats_img_s"]) > 0

    t = st["tests"]
    assert t["passed"] > 0 and t["failed"] == t["error"] == 0 and t["failing"] == [] and t["exit_code"] == 0

    lo = st["loader"]
    assert min(lo["decode_only"], lo["pipeline"], lo["baseline"]) > 0 and "baseline_error" not in lo
    assert math.isclose(lo["pipeline_vs_baseline"], lo["pipeline"] / lo["baseline"])
    assert lo["hw_decoder"]["used"] is None and "no GPU" in lo["hw_decoder"]["why"]
    assert set(lo["sweep_skipped"]) == set(check_stages.GPU_KNOBS)
    assert all("GPU only" in why for why in lo["sweep_skipped"].values())
    assert {p["layout"] for p in lo["sweep"]} == {"NCHW", "NHWC"}
    rates = [p["img_s"] for p in lo["sweep"]]
    assert lo["best"]["img_s"] == max(rates) and lo["default_img_s"] == rates[0]
    assert {p["threads"] for p in lo["sweep"]} >= {1, 2} or m["cores"] == 1
    assert {p["batch_size"] for p in lo["sweep"]} == {TINY.batch_size, 2 * TINY.batch_size}
    assert {p["prefetch"] for p in lo["sweep"]} == set(TINY.prefetch)

    s = st["stats"]
    assert s["decode_img_s"] > 0 and math.isclose(
        s["stats_vs_decode_only"], s["stats_img_s"] / s["decode_img_s"], rel_tol=1e-6
    )

    tr = st["train"]
    assert set(tr["synthetic_img_s"]) == {"fp32", "bf16", "bf16_channels_last"}
    assert tr["tf32"]["wins"] is None and "no GPU" in tr["tf32"]["why"]  # a tensor-core mode
    fs = tr["fused_sgd"]
    assert fs["variant"] == tr["best"] and math.isclose(fs["fused_vs_plain"], fs["fused_img_s"] / fs["plain_img_s"])
    assert fs["wins"] == ("fused" if fs["fused_vs_plain"] > 1 else "plain")
    assert tr["end_to_end_loader"]["layout"] == ("NHWC" if tr["best"].endswith("channels_last") else "NCHW")
    if "end_to_end_default_img_s" in tr:  # the loader's best setting against its default, end to end
        assert math.isclose(tr["end_to_end_best_vs_default"], tr["end_to_end_img_s"] / tr["end_to_end_default_img_s"])
    else:
        assert "the loader's best setting is its default" in " ".join(tr["notes"])
    assert tr["best"] == max(tr["synthetic_img_s"], key=tr["synthetic_img_s"].get)
    prof = tr["profile"]  # the heaviest operators, largest first, their shares of the profiled time
    shares = [op["share"] for op in prof["top"]]
    assert prof["on"] == "cpu operators" and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert math.isclose(sum(op["ms_per_step"] for op in prof["top"]) / prof["ms_per_step"], sum(shares))
    assert any("conv" in op["name"] for op in prof["top"])  # AlexNet's time goes to its convolutions
    lr = tr["lrn"]
    assert lr["auto_img_s"] == tr["synthetic_img_s"][tr["best"]]
    assert min(lr["pool_img_s"], lr["analytic_img_s"], lr["identity_img_s"]) > 0
    assert lr["chosen"] == ["analytic"] and "triton_img_s" not in lr  # the CPU never takes Triton
    assert lr["analytic_img_s"] == lr["auto_img_s"]  # "auto" was the analytic LRN: one reading, not two
    assert math.isclose(lr["auto_vs_pool"], lr["auto_img_s"] / lr["pool_img_s"])
    assert math.isclose(lr["share_of_step"], 1 - lr["auto_img_s"] / lr["identity_img_s"])
    hs = tr["host_sync"]
    assert math.isclose(hs["trainer_vs_no_sync"], hs["trainer_img_s"] / hs["no_sync_img_s"])
    assert tr["two_tower_one_device_img_s"] > 0 and tr["end_to_end_img_s"] > 0 and 0 <= tr["data_wait_frac"] <= 1

    p = st["paper_init"]
    assert p["width"] == TINY.width and p["lr"] == 0.01 and p["batch_size"] == 128  # the paper's recipe, §5
    assert math.isclose(p["chance_loss"], math.log(TINY.classes))
    assert p["steps"] >= len(p["loss_log"]) >= 1 and all(math.isfinite(v) for _, v in p["loss_log"])
    assert [s for s, _ in p["loss_log"]] == sorted(s for s, _ in p["loss_log"])
    if p["left_chance"]:
        step = p["left_chance_step"]
        assert dict(p["loss_log"])[step] < 0.9 * p["chance_loss"]

    md = (out / "check.md").read_text()
    assert all(f"| {n} | ok |" in md for n in STAGES) and md in r.stdout


def _fake(**figs):
    def stage(ctx, fig):
        fig.update(figs)

    return stage


def test_a_failed_stage_is_one_line_and_the_rest_go_on(tmp_path, monkeypatch):
    def boom(ctx, fig):
        fig["measured"] = 1.0
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(check, "STAGE_FNS", {**check.STAGE_FNS, "data": boom, "train": _fake(x=2.0)})
    rep = run_check(tmp_path, device="cpu", stages=("data", "stats", "train"), work=tmp_path / "w", log=_quiet)
    st = rep["stages"]
    assert st["data"]["status"] == "failed" and st["data"]["error"] == "RuntimeError: boom"
    assert st["data"]["measured"] == 1.0  # what a stage measured before it failed is kept
    assert st["stats"]["status"] == "skipped" and "data stage" in st["stats"]["error"]
    assert st["tests"] == {**st["tests"], "status": "skipped", "error": "not among --stages"}
    assert st["train"]["status"] == "ok" and st["train"]["x"] == 2.0
    assert json.loads((tmp_path / "check.json").read_text()) == json.loads(json.dumps(rep))


def test_a_stage_past_its_box_times_out_and_keeps_its_figures(tmp_path, monkeypatch):
    def slow(ctx, fig):
        fig["first"] = 1.0
        time.sleep(0.3)
        ctx.check_time()
        fig["second"] = 2.0

    monkeypatch.setattr(check, "STAGE_FNS", {**check.STAGE_FNS, "train": slow})
    rep = run_check(
        tmp_path, device="cpu", budget_s=0.2, stages=("train", "paper_init"), work=tmp_path / "w", log=_quiet
    )
    tr = rep["stages"]["train"]
    assert tr["status"] == "timeout" and tr["first"] == 1.0 and "second" not in tr
    assert tr["time_box_s"] < 0.2  # its share: train's weight over train's and paper_init's
    assert rep["stages"]["paper_init"]["status"] == "skipped"  # no time left


def test_an_interrupted_check_leaves_what_it_measured(tmp_path, monkeypatch):
    def interrupt(ctx, fig):
        fig["partial"] = 3.0
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "STAGE_FNS", {**check.STAGE_FNS, "data": _fake(synth_img_s=5.0), "train": interrupt})
    with pytest.raises(KeyboardInterrupt):
        run_check(tmp_path, device="cpu", work=tmp_path / "w", log=_quiet)
    st = json.loads((tmp_path / "check.json").read_text())["stages"]
    assert STAGES[:2] == ("data", "train")  # the stage after data is the one interrupted
    assert st["data"]["status"] == "ok" and st["data"]["synth_img_s"] == 5.0
    assert st["train"]["status"] == "failed" and st["train"]["partial"] == 3.0
    assert "| data | ok |" in (tmp_path / "check.md").read_text()


def test_bad_options_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'lodaer'"):
        run_check(tmp_path, device="cpu", stages=("lodaer",))
    with pytest.raises(ValueError, match="size='huge'"):
        run_check(tmp_path, device="cpu", size="huge")
    r = run_cli("check", "--out", tmp_path, "--stages", "data,nope", check=False)
    assert r.returncode == 1 and "unknown stage 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _ctx(tests, seconds=120.0):
    ctx = Context(device="cpu", size=TINY, work=None, cores=1, tests=tests)
    ctx.deadline = time.perf_counter() + seconds
    return ctx


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_tests_stage_counts_results_and_names_the_failures(tmp_path, workers):
    """Read from pytest -v's result lines, serial or under pytest-xdist (GPU_TESTS runs 4 workers)."""
    f = tmp_path / "test_mixed.py"
    f.write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_fails():\n    assert 1 == 2\n\n"
        "@pytest.mark.skip\ndef test_skipped():\n    pass\n\n"
        "@pytest.mark.parametrize('x', [1, 2])\ndef test_param(x):\n    assert x == 1\n"
    )
    fig = {}
    with pytest.raises(RuntimeError, match="2 failing"):
        stage_tests(_ctx((str(f), *workers)), fig)
    assert (fig["passed"], fig["failed"], fig["skipped"], fig["error"]) == (2, 2, 1, 0)
    assert sorted(n.split("::")[-1] for n in fig["failing"]) == ["test_fails", "test_param[2]"]
    assert fig["exit_code"] == 1


def test_tests_stage_stops_pytest_at_its_box(tmp_path):
    f = tmp_path / "test_slow.py"
    f.write_text("import time\n\ndef test_quick():\n    pass\n\ndef test_slow():\n    time.sleep(60)\n")
    fig, t0 = {}, time.perf_counter()
    with pytest.raises(StageTimeout, match="after 1 results"):
        stage_tests(_ctx((str(f),), seconds=8.0), fig)
    assert time.perf_counter() - t0 < 30 and fig["passed"] == 1


def test_tests_stage_without_pytest_is_skipped_saying_so(tmp_path, monkeypatch):
    """In a venv without the [test] extra, pytest exits at once: the stage says why instead of reporting 0/0."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    with pytest.raises(check.StageSkipped, match=r"pytest is not installed: pip install -e '.\[test\]'"):
        stage_tests(_ctx(("tests",), seconds=8.0), {})


def test_sizes_are_what_the_issue_asks():
    full = check.SIZES["full"]
    assert 18_000 <= full.classes * full.train_per_class <= 25_000 and full.width == 1.0  # ~20k distinct images
    assert 100 <= TINY.classes * (TINY.train_per_class + TINY.val_per_class) <= 500  # a few hundred
    assert set(full.hw_decoder_load) >= {0.0, 0.65, 0.8, 0.9, 0.95, 1.0} and set(full.hybrid_huffman_threshold) == {
        0,
        1_000_000,
    }  # against DALI's defaults, 0.65 and 1,000,000 pixels
    assert isinstance(full, CheckSize) and set(check.WEIGHTS) == set(STAGES)


def test_a_rerun_of_some_stages_uses_the_data_already_made(tmp_path, prepared, monkeypatch):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(prepared, work / "data")
    (work / "data" / "stats.json").write_text("{}")  # only its presence matters here
    seen = {}
    monkeypatch.setattr(check, "STAGE_FNS", {**check.STAGE_FNS, "stats": lambda ctx, fig: seen.update(d=ctx.data)})
    rep = run_check(tmp_path / "out", device="cpu", stages=("stats",), work=work, log=_quiet)
    assert seen["d"] == work / "data" and rep["stages"]["stats"]["status"] == "ok"
    assert rep["stages"]["data"]["status"] == "skipped" and str(work / "data") in rep["stages"]["data"]["error"]


def test_the_gpu_selection_names_real_tests():
    """GPU_TESTS deselects the compiled epoch by its id: if the id drifts, the deselection would silently stop."""
    import subprocess
    import sys

    from alexmodel.tools.check_stages import GPU_TESTS, ROOT

    def collect(*args):
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=limit(300),
        )
        return {ln for ln in r.stdout.splitlines() if "::" in ln}

    assert GPU_TESTS[:3] == ("tests", "-m", "gpu") and GPU_TESTS[3] == "--deselect" and GPU_TESTS[5:] == ("-n", "4")
    everything = collect(*GPU_TESTS[:3])  # one collection (~5 s): the deselected id must be one of these
    assert GPU_TESTS[4] in everything and len(everything - {GPU_TESTS[4]}) >= 5


def test_sigterm_keeps_the_figures_of_the_stage_in_progress(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, env_with_path

    p = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "check",
            "--device",
            "cpu",
            "--out",
            tmp_path,
            "--stages",
            "paper_init,tests",
            "--work",
            tmp_path / "w",
        ],
        cwd=ROOT,
        env=env_with_path(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + limit(60)
    while time.time() < deadline and not (tmp_path / "check.json").is_file():
        time.sleep(0.1)
    time.sleep(1.0)  # the tests stage's pytest is running
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=limit(60))
    assert p.returncode == 130 and "interrupted" in err
    st = json.loads((tmp_path / "check.json").read_text())["stages"]
    assert st["tests"]["status"] == "failed" and st["tests"]["error"] == "interrupted"


def test_gpu_knobs_are_swept_on_a_gpu_and_an_old_manifest_says_why_no_hints(prepared):
    """The sweep's plan for a GPU (computed here without one): every knob from the Loader's default first, and
    the preallocation hints left out, with the reason, where manifest.json does not record the largest image."""
    from dataclasses import replace as dc_replace

    from alexdata.dataset import open_split

    split = open_split(prepared)
    ctx = Context(device="gpu", size=TINY, work=None, cores=4, tests=())
    default = check_stages.sweep_default(ctx)
    assert (
        default["hw_decoder_load"],
        default["hybrid_huffman_threshold"],
        default["preallocate"],
        default["layout"],
        default["prefetch"],
    ) == (0.65, 1_000_000, False, "NCHW", 2)  # the Loader's own
    knobs, skipped = check_stages.sweep_points(ctx, default, split)
    plan = dict(knobs)
    assert skipped == {} and list(plan)[:3] == list(check_stages.GPU_KNOBS)
    assert plan["hw_decoder_load"][0] == 0.65 and set(plan["hw_decoder_load"]) == set(TINY.hw_decoder_load)
    assert plan["hybrid_huffman_threshold"] == [1_000_000, 0] and plan["preallocate"] == [False, True]
    knobs, skipped = check_stages.sweep_points(ctx, default, dc_replace(split, max_hw=None))
    assert "preallocate" not in dict(knobs) and "re-run `alexnet prepare`" in skipped["preallocate"]


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ],
)
def test_results_are_named_after_the_gpu_found(name, slug):
    assert check.gpu_slug(name) == slug
    m = {"gpu": name, "cores": 16, "date": "2026-11-27T10:00:00Z"}
    assert check.result_name(m, "full") == f"{slug}-2026-11-27.json"
    assert check.result_name({**m, "gpu": None}, "tiny") == "cpu16-2026-11-27-tiny.json"


def test_the_loaders_best_setting_is_kept_for_a_later_checks_train_stage(tmp_path):
    """The train stage runs before the loader stage: a rerun on the same work folder reads the best setting the
    earlier loader stage left, for the same device, data and batch only."""
    ctx = Context(device="gpu", size=TINY, work=tmp_path, cores=4, tests=(), data=tmp_path / "data")
    best = {"batch_size": TINY.batch_size, "threads": 4, "hw_decoder_load": 0.8, "prefetch": 2}
    check_stages.keep_best_loader(ctx, best)
    assert ctx.best_loader == best
    later = Context(device="gpu", size=TINY, work=tmp_path, cores=4, tests=(), data=tmp_path / "data")
    assert check_stages.earlier_best_loader(later) == best
    for other in (dict(device="cpu"), dict(data=tmp_path / "other")):
        assert check_stages.earlier_best_loader(Context(**{**vars(later), **other})) == {}
    (tmp_path / check_stages.BEST_LOADER).write_text("{not json")
    assert check_stages.earlier_best_loader(later) == {}
    (tmp_path / check_stages.BEST_LOADER).write_text("[1, 2]")  # JSON, but no record
    assert check_stages.earlier_best_loader(later) == {}
    # a file of another version or machine: knobs the sweep does not know dropped, threads capped to the cores
    check_stages.keep_best_loader(ctx, {**best, "threads": 64, "gone_knob": 1, "prefetch": "2"})
    assert check_stages.earlier_best_loader(later) == {
        "batch_size": TINY.batch_size,
        "threads": 4,
        "hw_decoder_load": 0.8,
    }
    assert check_stages.earlier_best_loader(Context(**{**vars(later), "work": tmp_path / "none"})) == {}
