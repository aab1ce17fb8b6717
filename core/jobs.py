"""Background jobs: a queue in front of one compute slot, with progress, cancel and captured errors.

The Streamlit server holds one JobManager per process, in a plain module global (see
``dashboard.state.job_manager``), where no client message can clear it; pages submit work and poll jobs.
The compute slot is a file lock, so jobs of the dashboard and of the CLI (`python -m core experiment`) on
one cache folder queue for it.
"""

import contextlib
import queue
import secrets
import threading
import time
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from core.errors import Cancelled, TransferScopeError

Report = Callable[..., None]  # (stage, done, total, note="")
ACTIVE_STATUSES = ("queued", "running")
COMPUTE_LOCK = "compute.lock"
WAITING_FOR_SLOT = "waiting for another TransferScope process to finish computing"
OVERALL_STAGE = "runs trained"  # a job-wide stage: when a job reports it, its time left is estimated from it


def compute_slot_path(cache_dir) -> Path:
    """The lock file every process using `cache_dir` queues on before heavy work."""
    return Path(cache_dir) / COMPUTE_LOCK


@contextlib.contextmanager
def compute_slot(lock_path, keep_waiting: Callable[[], bool] = lambda: True, on_wait=None, poll_s: float = 0.2):
    """Hold the compute slot (a file lock shared across processes) for the block.

    While another process holds it, calls `on_wait()` once and polls; yields False without the slot
    as soon as `keep_waiting()` turns false (e.g. the job was cancelled), True once it holds it.
    """
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    while True:
        try:
            lock.acquire(timeout=poll_s)
            break
        except Timeout:
            if not keep_waiting():
                yield False
                return
            if on_wait is not None:
                on_wait()
                on_wait = None
    try:
        yield True
    finally:
        lock.release()


@dataclass
class Job:
    """One submitted piece of work and what is known about it so far.

    Fields are replaced, never mutated in place, so another thread may read them at any time.
    """

    id: str
    name: str
    kind: str = ""  # what sort of work, e.g. "experiment" or "feature map": callers find their own jobs by it
    status: str = "queued"  # "queued" | "running" | "done" | "failed" | "cancelled"
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)  # stage -> (done, total)
    message: str = ""
    note: str = ""  # the latest stage's detail, e.g. a fine-tune's epoch, validation score and time left
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage_started: dict[str, float] = field(default_factory=dict)  # stage -> time of its first report
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def time_left_s(self, now: float | None = None) -> float | None:
        """Seconds left at the rate measured so far: of the job-wide stage (`OVERALL_STAGE`) once a step of it is
        done, else of the current stage; None until a step of that is done, or once it is complete."""
        stage = OVERALL_STAGE if self.progress.get(OVERALL_STAGE, (0, 0))[0] else self.message
        done, total = self.progress.get(stage, (0, 0))
        if stage not in self.stage_started or not 0 < done < total:
            return None
        return ((time.time() if now is None else now) - self.stage_started[stage]) / done * (total - done)


def _describe(err: Exception) -> str:
    """One readable line for an unexpected error: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class JobManager:
    """Run submitted jobs on daemon worker threads, in submission order.

    >>> manager = JobManager()  # doctest: +SKIP
    >>> job = manager.submit("demo features", lambda report: extract(progress=report), kind="extract")  # doctest: +SKIP
    >>> manager.get(job.id).status  # doctest: +SKIP
    'running'
    """

    def __init__(self, workers: int = 1, keep_finished: int = 50, slot_path=None):
        """`slot_path`: a compute_slot lock file shared with other processes (None: this process only)."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.slot_path = slot_path
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self.keep_finished = keep_finished  # finished jobs remembered (with their results) for the UI
        self._threads = [
            threading.Thread(target=self._work, name=f"transferscope-job-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, name: str, fn: Callable[[Report], Any], kind: str = "") -> Job:
        """Queue ``fn(report)``; `report(stage, done, total)` records progress and raises Cancelled on cancel."""
        job = Job(id=secrets.token_hex(6), name=name, kind=kind)
        with self._lock:
            if self._closed:
                raise RuntimeError("this JobManager was shut down; create a new one")
            self._jobs[job.id] = job
            self._queue.put((job, fn))
            self._forget_old_locked()
        return job

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next report.

        Returns False when the job is unknown or already finished.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in ACTIVE_STATUSES:
                return False
            job.cancel_event.set()
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()
            return True

    def get(self, job_id: str) -> Job | None:
        """Return the job with this id, or None (e.g. an id from before the app restarted)."""
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Return all jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def active(self) -> list[Job]:
        """Return queued and running jobs in the order they will run (running first)."""
        with self._lock:
            return self._active_locked()

    def queue_position(self, job_id: str) -> int | None:
        """Return 0 for a running job, 1 for the next queued one, ...; None when not active."""
        with self._lock:
            active = self._active_locked()
        queued = [job.id for job in active if job.status == "queued"]
        if job_id in queued:
            return queued.index(job_id) + 1
        return 0 if any(job.id == job_id for job in active) else None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel every active job and stop the workers, waiting up to `timeout_s` for each."""
        for job in self.active():
            self.cancel(job.id)
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)

    def _forget_old_locked(self) -> None:
        """Drop the oldest finished jobs beyond `keep_finished`, so a long-lived server stays small."""
        finished = [job_id for job_id, job in self._jobs.items() if job.status not in ACTIVE_STATUSES]
        for job_id in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job_id]

    def _active_locked(self) -> list[Job]:
        active = [job for job in self._jobs.values() if job.status in ACTIVE_STATUSES]
        return sorted(active, key=lambda job: job.status != "running")

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, fn = item
            with self._slot(job) as holding:
                if holding and self._start(job):
                    self._run(job, fn)

    def _slot(self, job: Job):
        """The cross-process compute slot for `job`, given up while waiting if the job is cancelled."""
        if self.slot_path is None:
            return contextlib.nullcontext(True)

        def note_waiting():
            with self._lock:
                job.message = WAITING_FOR_SLOT

        return compute_slot(self.slot_path, keep_waiting=lambda: job.status == "queued", on_wait=note_waiting)

    def _start(self, job: Job) -> bool:
        with self._lock:
            if job.status != "queued":
                return False
            job.status, job.started, job.message = "running", time.time(), ""
            return True

    def _run(self, job: Job, fn: Callable[[Report], Any]) -> None:
        """Call fn and record how it ended; never lets an exception escape the worker thread."""
        try:
            result = fn(self._reporter(job))
        except Cancelled:
            self._finish(job, "cancelled")
        except TransferScopeError as err:
            self._finish(job, "failed", error=str(err))
        except Exception as err:
            self._finish(job, "failed", error=_describe(err), traceback=traceback_module.format_exc())
        else:
            self._finish(job, "done", result=result)

    def _reporter(self, job: Job) -> Report:
        def report(stage: str, done: int, total: int, note: str = "") -> None:
            with self._lock:
                if stage not in job.stage_started:
                    job.stage_started = {**job.stage_started, stage: time.time()}
                job.progress = {**job.progress, stage: (int(done), int(total))}
                job.message, job.note = stage, note
            if job.cancel_event.is_set():
                raise Cancelled(f"job {job.name!r} was cancelled during {stage!r}")

        return report

    def _finish(self, job: Job, status: str, **fields) -> None:
        with self._lock:
            job.status, job.finished = status, time.time()
            for name, value in fields.items():
                setattr(job, name, value)
