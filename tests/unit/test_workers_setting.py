"""`[server] workers` and what a worker process reads of itself."""

from __future__ import annotations

import os

import pytest
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.gateway.worker import WorkerSlot, cpu_quota, parse_workers, resolve_workers


def test_workers_default_to_one_and_take_an_integer_or_auto():
    assert parse_config({}).server.workers == 1
    assert parse_config({"server": {"workers": 4}}).server.workers == 4
    assert parse_config({"server": {"workers": "auto"}}).server.workers == "auto"


@pytest.mark.parametrize("value", [0, -1, 257, "4", "all", 2.0, True])
def test_a_worker_count_that_is_not_one_is_refused_by_name(value):
    with pytest.raises(ConfigError) as refused:
        parse_config({"server": {"workers": value}})
    assert str(refused.value) == f'server.workers must be an integer from 1 to 256 or "auto" (got {value!r})'


def test_parse_workers_names_where_the_value_came_from():
    assert parse_workers(3, "--workers") == 3
    with pytest.raises(ValueError, match=r'^--workers must be an integer from 1 to 256 or "auto" \(got 0\)$'):
        parse_workers(0, "--workers")


def test_auto_is_the_cores_this_process_may_use_within_its_cpu_quota(tmp_path, monkeypatch):
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(5) == 5
    monkeypatch.setattr("tollway.service.gateway.worker.cpu_quota", lambda: None)
    assert resolve_workers("auto") == cores
    # A container limited to 1.5 CPUs: 2 workers at most (a started core is worth a worker).
    monkeypatch.setattr("tollway.service.gateway.worker.cpu_quota", lambda: 1.5)
    assert resolve_workers("auto") == min(cores, 2)
    monkeypatch.setattr("tollway.service.gateway.worker.cpu_quota", lambda: 0.2)
    assert resolve_workers("auto") == 1


def test_cpu_quota_reads_cgroup_v2_then_v1(tmp_path):
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None


def test_a_worker_knows_its_slot_from_the_environment():
    assert WorkerSlot.from_environ({}) is None
    assert WorkerSlot.from_environ({"TOLLWAY_WORKER_INDEX": "1", "TOLLWAY_WORKER_COUNT": "2"}) == WorkerSlot(1, 2)
    for bad in ({"TOLLWAY_WORKER_INDEX": "2", "TOLLWAY_WORKER_COUNT": "2"}, {"TOLLWAY_WORKER_INDEX": "x"}):
        with pytest.raises(ValueError, match="is not a worker slot"):
            WorkerSlot.from_environ(bad)
