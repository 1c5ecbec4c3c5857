"""Several runs of a grid at once: one worker process per core for heads trained on cached states.

A probe head trains on one thread (its ops are small; two threads stall at OpenMP barriers), so
on a machine with N cores a sweep of probe heads leaves N - 1 of them idle. ``RunPool`` runs the
runs that are not done yet on ``workers`` processes (``concurrent.futures`` with the ``spawn``
start method: a fork would copy the parent's OpenMP and Accelerate state), each with
``cores // workers`` threads by default. A run's numbers do not depend on where it runs: every run
seeds itself and the probe runs pin their thread count, so the records are the ones one process
writes (``tests/recipes/test_compare.py`` checks this).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
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


def _start_worker(threads: int) -> None:
    import sys

    import torch

    torch.set_num_threads(threads)
    sys.stdout = sys.stderr  # a run's progress lines: stdout is the command's result (compare's table)


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
    this process keeps running jobs from the end of the queue. ``prepare``
    (optional) runs once in this process before the workers start: the probe track computes the
    backbone's cached states there, on every core, so that the workers only read them. The workers
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
            with workers_ignore_ctrl_c():  # the workers start on the first submits
                futures = {index: executor.submit(function, jobs[index]) for index in queue}
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
            if self.prepare is not None:
                self.prepare()
                self.prepare = None
            self.executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(max(1, usable_cores() // self.workers),),
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
