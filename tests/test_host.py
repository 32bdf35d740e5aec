"""alexdata.host: the cores a process really gets, from its affinity and its cgroup's CPU quota."""

import os

import pytest

from alexdata import host


@pytest.mark.parametrize(
    "files, want",
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: 2 CPUs
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_the_cgroup_quota_in_cores(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self-cgroup").write_text("0::/\n")
    assert host.quota_cores(str(tmp_path), proc=str(tmp_path / "self-cgroup")) == want


@pytest.mark.parametrize("v2", [True, False])
def test_the_quota_of_the_process_own_cgroup_and_its_ancestors(tmp_path, v2):
    """Without a cgroup namespace (a Slurm step, a systemd unit) the quota lives at the process's own cgroup path,
    under the root: the tightest of that cgroup and its ancestors counts."""
    root = tmp_path / "cg"
    base = root if v2 else root / "cpu"
    for rel, quota in (("", None), ("job", 1), ("job/step", 4)):
        d = base / rel
        d.mkdir(parents=True, exist_ok=True)
        if v2:
            (d / "cpu.max").write_text(f"{'max' if quota is None else quota * 100000} 100000\n")
        else:
            (d / "cpu.cfs_quota_us").write_text(f"{-1 if quota is None else quota * 100000}\n")
            (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/job/step\n" if v2 else "4:cpu,cpuacct:/job/step\n1:name=systemd:/\n")
    assert host.quota_cores(str(root), proc=str(proc)) == 1


def test_cores_never_exceed_the_affinity_or_the_quota(monkeypatch):
    monkeypatch.setattr(host, "quota_cores", lambda: 1)
    assert host.cores() == 1
    monkeypatch.setattr(host, "quota_cores", lambda: 10_000)
    assert host.cores() == len(os.sched_getaffinity(0))


def test_progress_off_a_terminal_is_a_plain_line_per_interval_and_one_at_the_end(capsys, monkeypatch):
    import alexdata.host as h

    now = [0.0]
    monkeypatch.setattr(h.time, "perf_counter", lambda: now[0])
    bar = h.progress_bar(total=8, desc="prepare", unit="img")  # stderr is pytest's capture: no terminal
    for _ in range(8):
        now[0] += 10  # an image every 10 s: a line when 30 s have passed since the last one
        bar.update()
    bar.close()
    bar.close()  # a second close prints nothing more
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["prepare:  38% 3/8", "prepare:  75% 6/8", "prepare: 100% 8/8"]
    assert lines[0].split(" [")[1] == "00:30<00:50, 10.00s/img]"  # tqdm's own words for the time and rate
    assert "\r" not in "".join(lines)
    quiet = h.progress_bar(total=8, desc="x", enabled=False)
    quiet.update(8)
    quiet.close()
    assert capsys.readouterr().err == ""
