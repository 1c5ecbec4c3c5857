"""Several runs of a grid at once: one worker process per core for heads trained on cached states.

A probe head trains on one thread (its ops are small; two threads stall at OpenMP barriers), so
on a machine with N cores a sweep of probe heads leaves N - 1 of them idle. ``RunPool`` runs the
runs that are not done yet on ``workers`` processes (``concurrent.futures``), each with
``cores // workers`` threads by default. A run's numbers do not depend on where it runs: every run
seeds itself and the probe runs pin their thread count, so the records are the ones one process
writes (``tests/recipes/test_compare.py`` checks this).

The workers are forked from a fork server (``multiprocessing``'s ``forkserver`` start method, on
Linux) that has imported torch, transformers, datasets, accelerate and poolft once, and has run no
torch op: a plain fork of this process would copy its OpenMP and Accelerate state, and ``spawn``
(macOS, Windows) makes every worker import them again (5 s each on an idle 2-core CPU, twice
that while the backbone pass runs). The server starts with the pool, so its imports overlap the
backbone pass, and one server serves every pool of a process while its environment and
``sys.path`` stay the same.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..errors import PoolftError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def check_workers(workers: int) -> int:
    """``workers`` when it is a positive count, else a one-line error."""
    if workers < 1:
        raise PoolftError(f"--workers {workers} must be 1 or more: the number of runs trained at once")
    return workers


@contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside never receive SIGINT; this one still does, once the block ends.

    Ctrl-C reaches every process of the terminal's group; a worker would print a traceback from
    wherever it stood (an import, an idle wait). Only the parent handles it: it stops the workers
    and reports one line (``RunPool.close``). Inside the block this thread blocks SIGINT, and a blocked
    signal stays blocked across fork and exec, so the workers started here (and the executor's thread
    that may start more) keep it blocked for good. A Ctrl-C pressed meanwhile reaches another thread;
    it is recorded and raised here when the block ends, instead of being lost. Where threads have no
    signal mask (Windows), SIGINT is ignored during the block instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if hasattr(signal, "pthread_sigmask"):
        pressed: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            signal.signal(signal.SIGINT, previous)
        if pressed and callable(previous):
            previous(signal.SIGINT, None)  # the Ctrl-C pressed meanwhile (KeyboardInterrupt by default)
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: what a worker imports before its first run, once in the fork server
PRELOAD = ("torch", "transformers", "datasets", "accelerate", "poolft.training.loop", "poolft.recipes.compare")
#: the (environment, sys.path) the running fork server was started with
_fork_server_start: tuple[dict[str, str], list[str]] | None = None


def worker_context(restart_on_change: bool = True) -> multiprocessing.context.BaseContext:
    """The start method of the workers: a fork server that has imported ``PRELOAD`` (Linux), started
    now so that its imports run while this process works; ``spawn`` elsewhere.

    The server is started again when it is gone (killed), and with ``restart_on_change`` (a new
    pool) when this process's environment or ``sys.path`` changed since it started: modules read
    settings such as ``HF_HUB_OFFLINE`` when they are imported. (Within a pool they change only by
    this process's own work, e.g. torch setting ``TORCHINDUCTOR_CACHE_DIR``.) It imports from this
    process's ``sys.path`` (passed as ``PYTHONPATH``; each worker gets this process's environment
    back as it starts).
    """
    global _fork_server_start
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    start = (dict(os.environ), list(sys.path))
    if restart_on_change and _fork_server_start is not None and _fork_server_start != start:
        forkserver._forkserver._stop()  # the only way to restart it; used by CPython's own tests
    context.set_forkserver_preload(list(PRELOAD))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    try:
        with workers_ignore_ctrl_c():  # the workers it forks keep SIGINT blocked, as it does
            forkserver.ensure_running()  # returns at once while the server lives
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous
    if restart_on_change or _fork_server_start is None:
        _fork_server_start = start
    return context


def _start_worker(threads: int, environ: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environ)  # the server's PYTHONPATH was only for its imports
    import torch

    torch.set_num_threads(threads)
    sys.stdout = sys.stderr  # a run's progress lines: stdout is the command's result (compare's table)


def _run_in_worker(poolft_file: str, function: Callable[[Any], Any], job: Any) -> Any:
    """``function(job)``, after checking that this worker runs the parent's poolft."""
    import poolft

    if os.path.realpath(poolft.__file__) != poolft_file:
        raise PoolftError(
            f"the worker processes import poolft from {poolft.__file__}, this process from {poolft_file} (a "
            "poolft package in the working directory?); start poolft from another folder or use --workers 1"
        )
    return function(job)


def check_not_a_worker_import() -> None:
    """A one-line error where a worker process is re-running the user's script as it starts.

    ``spawn`` imports the script that started the parent; without ``if __name__ == "__main__":``
    around the call, the worker would start the sweep again and train runs beside its parent.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise PoolftError(
            "poolft was started again inside one of its own worker processes: in a script that runs a sweep or "
            'compare with workers, put the call under `if __name__ == "__main__":` (or use --workers 1)'
        )


#: what starting the workers costs, in seconds (each imports torch, transformers and datasets: 5 s
#: on an idle 2-core Xeon, 12 s on a busy one)
WORKER_STARTUP_SECONDS = 10.0


class RunPool:
    """Runs ``function(job)`` for a list of jobs, inline (``workers=1``) or on worker processes.

    Jobs run inline, one by one and timed, until the runs left would take longer on one process
    than on the workers plus ``startup_seconds`` to start them: a grid of runs of a second each is
    not worth a worker's import of torch. From then on the jobs go to the workers; while they start,
    this process keeps running jobs from the end of the queue. ``prepare`` (optional) runs once in
    this process before the first job, where there are workers: the probe track computes the
    backbone's cached states of every split there, on every core, while the fork server imports,
    so that the runs only read them (without workers, the first run computes what it reads). The workers
    stop on ``close`` (or at the end of a ``with`` block). Each gets ``max(1, usable_cores() //
    workers)`` threads; a run's own ``train.torch_threads`` still overrides that.

    Raises:
        PoolftError: from a job (re-raised here, the first one in job order), or when a worker
            process dies (for example killed for memory).
    """

    def __init__(
        self,
        workers: int = 1,
        prepare: Callable[[], None] | None = None,
        startup_seconds: float | None = None,
    ) -> None:
        check_not_a_worker_import()
        self.workers = check_workers(workers)
        self.prepare = prepare
        self.startup_seconds = WORKER_STARTUP_SECONDS if startup_seconds is None else startup_seconds
        self.executor: ProcessPoolExecutor | None = None
        self.context = worker_context() if self.workers > 1 else None

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self.close(interrupted=kind is not None and issubclass(kind, KeyboardInterrupt))

    def close(self, interrupted: bool = False) -> None:
        """Stop the workers: after their current runs, or at once when ``interrupted`` (Ctrl-C).

        A run stopped at once keeps what it wrote (every file is written atomically) and resumes
        from its latest checkpoint on the next sweep.
        """
        if self.executor is None:
            return
        if interrupted:
            # ProcessPoolExecutor has no public way to stop running calls before Python 3.14
            for process in list(getattr(self.executor, "_processes", {}).values()):
                process.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None

    def map(self, function: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        """``[function(job) for job in jobs]``, in that order, inline or on the workers (see the class)."""
        results: list[Any] = [None] * len(jobs)
        queue = list(range(len(jobs)))
        if jobs and self.workers > 1 and self.prepare is not None:
            self.prepare()
            self.prepare = None
        if self.executor is None:
            timed, seconds = 0, 0.0
            while queue and not (timed and self.worth_workers(len(queue), seconds / timed)):
                index = queue.pop(0)
                started = time.perf_counter()
                results[index] = function(jobs[index])
                seconds, timed = seconds + time.perf_counter() - started, timed + 1
        if queue:
            starting = self.executor is None
            executor = self._executor()
            here = os.path.realpath(sys.modules["poolft"].__file__)
            try:
                with workers_ignore_ctrl_c():  # the workers start on the first submits
                    futures = {index: executor.submit(_run_in_worker, here, function, jobs[index]) for index in queue}
            except (EOFError, OSError) as error:  # the fork server died (killed) before it forked them
                raise PoolftError(
                    f"the worker processes could not be started ({type(error).__name__}: their fork server "
                    "stopped); run again (finished runs are kept), or use --workers 1"
                ) from None
            try:
                taken = self._work_while_workers_start(function, jobs, futures, results) if starting else set()
                for index, future in futures.items():
                    if index not in taken:
                        results[index] = self._result(future)
            except BaseException:
                for future in futures.values():
                    future.cancel()
                raise
        return results

    @staticmethod
    def _work_while_workers_start(
        function: Callable[[Any], Any], jobs: Sequence[Any], futures: dict[int, Future], results: list[Any]
    ) -> set[int]:
        """Run jobs here, from the end of the queue, until a worker has finished one; returns their indices.

        A starting worker spends seconds importing torch and transformers, and this process would
        wait for it. A job is taken only when its future can still be cancelled (the workers have
        not picked it up), so every job runs exactly once.
        """
        taken: set[int] = set()
        for index in reversed(list(futures)):
            if any(future.done() for i, future in futures.items() if i not in taken):
                break  # the workers are up
            if not futures[index].cancel():
                break  # the workers have reached this job: every earlier one is theirs too
            taken.add(index)
            results[index] = function(jobs[index])
        return taken

    def worth_workers(self, runs_left: int, seconds_per_run: float) -> bool:
        """Whether ``runs_left`` runs of ``seconds_per_run`` each end sooner on the workers, counting
        their start."""
        if self.workers == 1 or runs_left < 2:
            return False
        saved = runs_left * seconds_per_run * (1 - 1 / min(self.workers, runs_left))
        return saved > self.startup_seconds

    def _executor(self) -> ProcessPoolExecutor:
        if self.executor is None:
            self.context = worker_context(restart_on_change=False)  # (the server may have been killed meanwhile)
            self.executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=self.context,
                initializer=_start_worker,
                initargs=(max(1, usable_cores() // self.workers), dict(os.environ)),
            )
        return self.executor

    @staticmethod
    def _result(future: Future) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        try:
            while True:
                try:
                    # in short waits: a signal (Ctrl-C) is handled between them, not after the run
                    return future.result(timeout=0.5)
                except TimeoutError:
                    continue
        except BrokenProcessPool:
            raise PoolftError(
                "a worker process of the sweep died (out of memory, or a script that calls poolft without "
                '`if __name__ == "__main__":`); rerun with --workers 1 or fewer workers: finished runs are kept'
            ) from None
