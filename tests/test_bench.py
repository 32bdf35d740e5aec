"""Benchmarks are not timed tests: these only check that each runs on tiny data and reports what it promises."""

import numpy as np
import pytest
import torch

from alexdata.bench import bench_loader, bench_prepare, hw_decoder_check
from alexmodel.tools.bench import bench_train

STATS = {"mean": [120, 110, 100], "std": [60, 60, 60], "eigval": [3000, 200, 50], "eigvec": np.eye(3).tolist()}


def test_bench_prepare(synth_tree):
    r = bench_prepare(str(synth_tree), images=6, rounds=1)
    assert r["images"] == 6 and r["prepare_per_core"] > 0 and r["plain_pil_per_core"] > 0
    assert np.isclose(r["speedup"], r["prepare_per_core"] / r["plain_pil_per_core"])


def test_bench_loader(prepared):
    r = bench_loader(str(prepared), batch_size=8, seconds=0.2, threads=1, stats=STATS, rounds=1)
    for k in ("decode_only", "pipeline", "baseline"):
        assert r[k] > 0 and len(r[k + "_rounds"]) == 1
    assert np.isclose(r["pipeline_vs_baseline"], r["pipeline"] / r["baseline"])


def test_bench_train(prepared):
    r = bench_train(
        str(prepared), steps=2, batch_size=4, width=0.0625, precisions=("fp32",), threads=1, stats=STATS, warmup=1
    )
    variants = {(v["placement"], v["channels_last"]) for v in r["synthetic"]}
    assert variants == {("single", False), ("single", True)}  # two towers need two GPUs, as in train
    hs = r["host_sync"]
    assert hs["trainer_images_per_s"] > 0 and hs["no_sync_images_per_s"] > 0
    assert np.isclose(hs["trainer_vs_no_sync"], hs["trainer_images_per_s"] / hs["no_sync_images_per_s"])
    e2e = r["end_to_end"]
    assert e2e["images_per_s"] > 0 and 0 <= e2e["data_wait_frac"] <= 1
    assert e2e["device_wait_frac"] is None  # CUDA events only: on the CPU the host's wait is the data's cost


def test_device_wait_hands_every_batch_on_and_times_nothing_off_cuda():
    from alexmodel.tools.bench import DeviceWait

    w = DeviceWait(iter(range(5)), torch.device("cpu"))
    assert list(w) == [0, 1, 2, 3, 4] and w.stalled_s() is None and w.pairs == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_the_gpu_the_device_wait_counts_a_late_loader_and_not_a_busy_device():
    """A loader that hands a batch 50 ms late to a device with 1 ms of work leaves the device idle most of the
    time; a device with ~200 ms of queued work per batch never waits for a prompt loader."""
    import time

    from alexmodel.tools.bench import DeviceWait

    x = torch.randn(4096, 4096, device="cuda")

    def share(delay_s: float, matmuls: int) -> float:
        def batches():
            for _ in range(8):
                time.sleep(delay_s)
                yield x

        w = DeviceWait(batches(), x.device)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in w:
            for _ in range(matmuls):
                b @ b
        torch.cuda.synchronize()
        return w.stalled_s() / (time.perf_counter() - t0)

    share(0.0, 1)  # warm-up: cuBLAS handles, the first kernels
    assert share(0.05, 1) > 0.6
    assert share(0.0, 200) < 0.05


def test_bench_loader_times_only_the_contenders_asked_for(prepared):
    r = bench_loader(
        str(prepared),
        batch_size=8,
        seconds=0.2,
        threads=1,
        stats=STATS,
        rounds=1,
        tuning={"prefetch": 3, "hw_decoder_load": 0.9},
        contenders=("decode_only", "pipeline"),
    )
    assert r["decode_only"] > 0 and r["pipeline"] > 0 and "baseline" not in r and "pipeline_vs_baseline" not in r
    assert np.isclose(r["pipeline_vs_decode_only"], r["pipeline"] / r["decode_only"])
    assert (r["prefetch"], r["hw_decoder_load"]) == (3, 0.9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hw_decoder_check_gives_a_verdict(prepared):
    r = hw_decoder_check(str(prepared), 0.5, batch_size=8, threads=2)
    assert r["load0"] > 0 and r["load1"] > 0 and isinstance(r["used"], bool) and "hw_decoder_load 1" in r["why"]


def test_full_batches_of_a_split_smaller_than_a_batch_is_an_error_not_an_endless_loop():
    # The first GPU check hung 280 s here: its data held one image, and Take(full_only) skipped every batch.

    from alexdata.errors import ConfigError
    from alexmodel.tools.bench import Take

    class Short:  # one epoch = one partial batch of 3 with a batch size of 4
        batch_size = 4

        def __iter__(self):
            return iter([(torch.zeros(3, 1), torch.zeros(3))])

    with pytest.raises(ConfigError, match="no full batch of 4"):
        list(Take(Short(), steps=5, full_only=True))

    class Mixed(Short):  # full batches then a partial one: only the full ones, epochs chained
        def __iter__(self):
            return iter([(torch.zeros(4, 1), torch.zeros(4)), (torch.zeros(3, 1), torch.zeros(3))])

    assert [len(b[1]) for b in Take(Mixed(), steps=3, full_only=True)] == [4, 4, 4]
