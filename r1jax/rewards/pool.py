"""Worker processes that score reward calls and can be killed when one hangs.

A reward function that hangs in a thread cannot be stopped; one in a process
can. Each worker scores a chunk of samples per message (batching keeps the
per-call cost to a function call plus three stores into shared memory) and
publishes which call it is in and since when. The parent watches those stamps:
a call past its timeout gets the worker killed and replaced, the call is
recorded as timed out, and the rest of the chunk goes to another worker. A
worker that dies (segfault, os._exit, the OOM killer) is handled the same way,
with the call it was in recorded as an error. A reward function that raises is
simply an error outcome; the worker lives on.
"""
from __future__ import annotations

import collections
import math
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import time
import traceback
from typing import Callable, Optional, Sequence

OK, NONE, ERROR, TIMEOUT = 0, 1, 2, 3

# (status, value, message): value is NaN unless status is OK.
Outcome = tuple[int, float, Optional[str]]

# Workers dying this many times in a row outside any reward call (e.g. unable to
# unpickle the reward functions) means a broken setup, not a hostile sample.
_MAX_UNEXPLAINED_DEATHS = 5
_IDLE_POLL_SECONDS = 0.1
# Slots of the shared progress array: row, function index, call start time.
_ROW, _FUNCTION, _STARTED = 0, 1, 2


def score_sample(functions: Sequence[tuple[str, Callable]], completion: str, fields: dict,
                 skip: frozenset = frozenset(), progress=None, row: int = 0) -> list[Optional[Outcome]]:
    """Outcomes of every reward function on one sample (None for skipped ones)."""
    outcomes: list[Optional[Outcome]] = []
    for index, (_, function) in enumerate(functions):
        if index in skip:
            outcomes.append(None)
            continue
        if progress is not None:
            # Zero first, so a reader never pairs an old start time with a new row.
            progress[_STARTED] = 0.0
            progress[_ROW], progress[_FUNCTION] = row, index
            progress[_STARTED] = time.monotonic()
        try:
            value = function(completion, **fields)
            if value is None:
                outcome = (NONE, math.nan, None)
            else:
                value = float(value)
                outcome = (OK, value, None) if math.isfinite(value) else (
                    ERROR, math.nan, f"returned a non-finite value {value}")
        except (Exception, SystemExit) as error:
            outcome = (ERROR, math.nan, describe_exception(error))
        outcomes.append(outcome)
    if progress is not None:
        progress[_STARTED] = 0.0
    return outcomes


def describe_exception(error: BaseException) -> str:
    """One line: the exception and where it was raised."""
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
    return f"{type(error).__name__}: {str(error)[:300]}{where}"


def _worker_main(connection, progress, functions):
    # Rewards run on this process's main thread: signal-based timeouts inside
    # them (math-verify's SIGALRM) work here, and the kill is the backstop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        chunk_id, items = message
        results = [score_sample(functions, completion, fields, skip, progress, row)
                   for row, completion, fields, skip in items]
        connection.send((chunk_id, results))


class _Worker:
    def __init__(self, process, connection, progress):
        self.process, self.connection, self.progress = process, connection, progress
        self.chunk: Optional[tuple[int, list[int]]] = None  # (chunk id, rows) while busy


class WorkerPool:
    """Scores (completion, fields) items with `functions` in `num_workers` processes.

    functions: (name, callable) pairs; callables must pickle (module-level
      functions or functools.partial of them), since workers are started with
      `mp_context` ("forkserver" by default: safe from a parent with JAX threads).
    timeouts: seconds allowed per call, one per function.
    num_workers=0 scores in the calling thread, without timeouts (debugging).
    """

    def __init__(self, functions: Sequence[tuple[str, Callable]], *, num_workers: int,
                 timeouts: Sequence[float], mp_context: str = "forkserver",
                 chunk_size: Optional[int] = None):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if len(timeouts) != len(functions) or not all(t > 0 for t in timeouts):
            raise ValueError(f"need one positive timeout per function, got {timeouts}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.functions = list(functions)
        self.timeouts = list(timeouts)
        self.num_workers = num_workers
        self.chunk_size = chunk_size
        self.restarts = 0
        self._workers: list[_Worker] = []
        self._next_chunk_id = 0
        if num_workers == 0:
            return
        try:
            pickle.dumps(self.functions)
        except Exception as error:
            raise ValueError(
                "reward functions must be picklable to reach worker processes: use "
                "module-level functions (or functools.partial of them), not lambdas or "
                f"closures ({error})") from None
        self._context = multiprocessing.get_context(mp_context)
        if mp_context == "forkserver":
            # Workers fork from a server that has already imported the rewards (and
            # sympy), so starting or replacing one takes milliseconds, not a second.
            self._context.set_forkserver_preload(["r1jax.rewards", "math_verify"])
        self._workers = [self._start_worker() for _ in range(num_workers)]

    def run(self, items: Sequence[tuple[str, dict]]) -> tuple[list[list[Outcome]], dict[str, int]]:
        """Outcomes[row][function] for every item, and counts of worker restarts."""
        restarts_before = self.restarts
        if self.num_workers == 0:
            outcomes = [score_sample(self.functions, completion, fields) for completion, fields in items]
            return outcomes, {"worker_restarts": 0}
        if not self._workers:
            raise RuntimeError("the worker pool is closed")
        try:
            return self._run(items, restarts_before)
        except BaseException:
            # Busy workers would deliver this batch's results into the next one.
            for worker in list(self._workers):
                if worker.chunk is not None:
                    self._replace(worker, None)
            raise

    def _run(self, items, restarts_before):
        outcomes: list[list[Optional[Outcome]]] = [[None] * len(self.functions) for _ in items]
        chunk_size = self.chunk_size or max(1, math.ceil(len(items) / (4 * self.num_workers)))
        pending = collections.deque(
            list(range(start, min(start + chunk_size, len(items))))
            for start in range(0, len(items), chunk_size))
        unexplained_deaths = 0
        while pending or any(worker.chunk for worker in self._workers):
            for worker in self._workers:
                if worker.chunk is None and pending:
                    self._send(worker, pending.popleft(), items, outcomes)
            busy = [worker for worker in self._workers if worker.chunk is not None]
            multiprocessing.connection.wait(
                [worker.connection for worker in busy] + [worker.process.sentinel for worker in busy],
                timeout=self._seconds_to_next_deadline(busy))
            for worker in busy:
                if self._collect(worker, outcomes):
                    unexplained_deaths = 0
                    continue
                timed_out = worker.process.is_alive() and self._overdue(worker, outcomes)
                if worker.process.is_alive() and not timed_out:
                    continue
                rows, died_in_call = self._replace(worker, outcomes)
                # Every timeout or death inside a call settles one call, so the
                # loop always ends; deaths outside calls settle nothing.
                unexplained_deaths = 0 if timed_out or died_in_call else unexplained_deaths + 1
                if unexplained_deaths >= _MAX_UNEXPLAINED_DEATHS:
                    raise RuntimeError(
                        f"reward worker processes died {unexplained_deaths} times in a row outside "
                        f"any reward call (last exit code {worker.process.exitcode}); check that "
                        "the reward functions and example fields unpickle in a fresh process, and "
                        "that scripts create the evaluator under `if __name__ == '__main__':`")
                undecided = [row for row in rows if None in outcomes[row]]
                if undecided:
                    pending.appendleft(undecided)
        return outcomes, {"worker_restarts": self.restarts - restarts_before}

    def close(self):
        workers, self._workers = self._workers, []
        for worker in workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            worker.connection.close()
            _reap_sandboxes(worker.process.pid, timeout=0.1)

    # -- internals ---------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        progress = self._context.RawArray("d", 3)
        process = self._context.Process(
            target=_worker_main, args=(child_end, progress, self.functions),
            name="r1jax-reward-worker", daemon=True)
        process.start()
        child_end.close()
        return _Worker(process, parent_end, progress)

    def _send(self, worker: _Worker, rows: list[int], items, outcomes):
        self._next_chunk_id += 1
        payload = [(row, items[row][0], items[row][1],
                    frozenset(index for index, outcome in enumerate(outcomes[row]) if outcome))
                   for row in rows]
        worker.chunk = (self._next_chunk_id, rows)
        try:
            worker.connection.send((self._next_chunk_id, payload))
        except OSError:
            pass  # a dead worker; its sentinel fires and the chunk is re-queued

    def _collect(self, worker: _Worker, outcomes) -> bool:
        """Store a finished chunk's results, if the worker has sent them."""
        try:
            if not worker.connection.poll():
                return False
            chunk_id, results = worker.connection.recv()
        except (EOFError, OSError):
            return False
        if chunk_id != worker.chunk[0]:
            return False
        for row, row_outcomes in zip(worker.chunk[1], results):
            for index, outcome in enumerate(row_outcomes):
                if outcomes[row][index] is None:
                    outcomes[row][index] = outcome
        worker.chunk = None
        return True

    def _overdue(self, worker: _Worker, outcomes) -> bool:
        """Whether the worker's current call has run past its timeout; if so,
        record it as timed out."""
        progress = worker.progress
        started = progress[_STARTED]
        row, index = int(progress[_ROW]), int(progress[_FUNCTION])
        if started <= 0 or progress[_STARTED] != started:
            return False
        if time.monotonic() - started <= self.timeouts[index]:
            return False
        outcomes[row][index] = (TIMEOUT, math.nan, f"timed out after {self.timeouts[index]:g} s")
        return True

    def _replace(self, worker: _Worker, outcomes) -> tuple[list[int], bool]:
        """Kill `worker` and start a fresh one in its place. Returns the rows it
        held and whether it died inside a call (recorded as an error)."""
        if worker.process.is_alive():
            # Kill its sandboxed programs first, so its sandbox launcher, still
            # alive, reaps them instead of leaving zombies to init.
            _reap_sandboxes(worker.process.pid, timeout=1.0)
            worker.process.kill()
        worker.process.join(5.0)
        progress = worker.progress
        died_in_call = False
        if outcomes is not None and progress[_STARTED] > 0:
            row, index = int(progress[_ROW]), int(progress[_FUNCTION])
            if outcomes[row][index] is None:  # not a timeout already recorded
                outcomes[row][index] = (
                    ERROR, math.nan, f"worker process died (exit code {worker.process.exitcode})")
                died_in_call = True
        worker.connection.close()
        _reap_sandboxes(worker.process.pid, timeout=0.1)
        rows = worker.chunk[1]
        fresh = self._start_worker()
        self._workers[self._workers.index(worker)] = fresh
        self.restarts += 1
        return rows, died_in_call

    def _seconds_to_next_deadline(self, busy: list[_Worker]) -> float:
        now, wait = time.monotonic(), _IDLE_POLL_SECONDS
        for worker in busy:
            started = worker.progress[_STARTED]
            if started > 0:
                index = int(worker.progress[_FUNCTION])
                wait = min(wait, started + self.timeouts[index] - now)
        return max(wait, 0.001)


def _reap_sandboxes(pid: Optional[int], timeout: float):
    """Kill sandboxed programs a worker started (see reap_sandbox_processes)."""
    if pid is None:
        return
    from r1jax.rewards.sandbox import reap_sandbox_processes
    try:
        reap_sandbox_processes(pid, timeout=timeout)
    except OSError:
        pass

