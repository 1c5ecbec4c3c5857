"""RunPool's worker processes: forked from a fork server that imported the libraries once."""

from __future__ import annotations

import os
import sys

import pytest

from poolft.errors import PoolftError
from poolft.recipes import workers
from poolft.recipes.workers import RunPool


def where_and_what(_: int) -> tuple[int, str | None, bool]:
    """In a worker: its parent process, a variable of the environment, and whether the training loop
    and datasets were imported before this job ran (this module and ``import poolft`` do not import them)."""
    return os.getppid(), os.environ.get("POOLFT_TEST_MARK"), {"poolft.training.loop", "datasets"} <= set(sys.modules)


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux's start method here")
def test_workers_fork_from_a_server_with_torch_imported_and_this_process_s_environment(monkeypatch):
    monkeypatch.setenv("POOLFT_TEST_MARK", "first")
    with RunPool(2, startup_seconds=0) as pool:
        parent, mark, imported = pool._executor().submit(where_and_what, 0).result()
    assert parent != os.getpid()  # the fork server's child, not this process's
    assert imported and mark == "first"
    # another environment (settings such as HF_HUB_OFFLINE are read at import): a new server
    monkeypatch.setenv("POOLFT_TEST_MARK", "second")
    with RunPool(2, startup_seconds=0) as pool:
        second_parent, mark, _ = pool._executor().submit(where_and_what, 0).result()
    assert mark == "second" and second_parent != parent
    with RunPool(2, startup_seconds=0) as pool:  # the same environment: the same server
        assert pool._executor().submit(where_and_what, 0).result()[0] == second_parent


def test_a_worker_running_another_poolft_is_one_line():
    with pytest.raises(PoolftError, match="the worker processes import poolft from .* use --workers 1"):
        workers._run_in_worker("/elsewhere/poolft/__init__.py", int, 0)


def test_prepare_runs_before_the_first_job_where_there_are_workers():
    events = []
    with RunPool(2, prepare=lambda: events.append("prepare"), startup_seconds=1e9) as pool:
        pool.map(events.append, ["job 1", "job 2"])  # not worth workers: both run here
        pool.map(events.append, ["job 3"])
    assert events == ["prepare", "job 1", "job 2", "job 3"]
    events.clear()
    with RunPool(1, prepare=lambda: events.append("prepare")) as pool:  # one process: the runs build it
        pool.map(events.append, ["job 1"])
    assert events == ["job 1"]


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux's start method here")
def test_a_killed_fork_server_is_started_again():
    import signal
    import time

    with RunPool(2, startup_seconds=0) as pool:
        server = pool._executor().submit(where_and_what, 0).result()[0]
    os.kill(server, signal.SIGKILL)
    time.sleep(0.5)
    with RunPool(2, startup_seconds=0) as pool:
        restarted = pool._executor().submit(where_and_what, 0).result()[0]
    assert restarted not in (server, os.getpid())  # a worker's parent: a new fork server
