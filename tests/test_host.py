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
    assert host.quota_cores(str(tmp_path)) == want


def test_cores_never_exceed_the_affinity_or_the_quota(monkeypatch):
    monkeypatch.setattr(host, "quota_cores", lambda: 1)
    assert host.cores() == 1
    monkeypatch.setattr(host, "quota_cores", lambda: 10_000)
    assert host.cores() == len(os.sched_getaffinity(0))
