"""Job manager: one compute slot, submission order, progress, cancel and captured errors."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.errors import DataError
from core.jobs import OVERALL_STAGE, WAITING_FOR_SLOT, Job, JobManager, compute_slot_path

ROOT = Path(__file__).resolve().parents[1]

TIMEOUT_S = 5.0


@pytest.fixture
def manager():
    manager = JobManager()
    yield manager
    manager.shutdown()


def wait_for(predicate, timeout_s=TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.005)


def wait_status(job, status):
    wait_for(lambda: job.status == status)
    return job


def blocking(started: threading.Event, release: threading.Event, result=None, timeout_s: float = TIMEOUT_S):
    """A job body that signals it started, then waits (up to `timeout_s`) for the test to release it."""

    def fn(report):
        started.set()
        if not release.wait(timeout_s):
            raise TimeoutError("test never released the job")
        return result

    return fn


def test_jobs_run_one_at_a_time_in_submission_order(manager):
    started, release, order = threading.Event(), threading.Event(), []
    first = manager.submit("first", blocking(started, release, "a"))
    second = manager.submit("second", lambda report: order.append("second") or "b")
    assert started.wait(TIMEOUT_S)
    assert (first.status, second.status) == ("running", "queued")
    assert [job.id for job in manager.active()] == [first.id, second.id]
    assert (manager.queue_position(first.id), manager.queue_position(second.id)) == (0, 1)
    time.sleep(0.05)
    assert order == [] and second.status == "queued"
    release.set()
    wait_status(second, "done")
    assert (first.result, second.result) == ("a", "b")
    assert first.finished <= second.started
    assert manager.active() == [] and manager.queue_position(first.id) is None
    assert [job.id for job in manager.jobs()] == [second.id, first.id]


def test_time_left_follows_the_measured_rate_of_the_job_wide_stage():
    job = Job("id", "train", message="fit SVM", progress={"fit SVM": (0, 1)}, stage_started={"fit SVM": 100.0})
    assert job.time_left_s(now=110) is None, "no step done yet: no estimate"
    job.progress = {**job.progress, "extract": (30, 40)}
    job.stage_started, job.message = {**job.stage_started, "extract": 100.0}, "extract"
    assert job.time_left_s(now=130) == pytest.approx(10), "30 images in 30 s: 10 left, about 10 s"
    job.progress = {**job.progress, OVERALL_STAGE: (0, 6)}
    job.stage_started = {**job.stage_started, OVERALL_STAGE: 150.0}
    assert job.time_left_s(now=130) == pytest.approx(10), "no run done yet: the current stage's rate"
    job.progress = {**job.progress, OVERALL_STAGE: (2, 6)}
    job.stage_started = {**job.stage_started, OVERALL_STAGE: 150.0}
    assert job.time_left_s(now=170) == pytest.approx(40), "two runs in 20 s: four more, about 40 s"
    job.progress = {**job.progress, OVERALL_STAGE: (6, 6)}
    assert job.time_left_s(now=200) is None


def test_a_job_records_when_each_stage_started(manager):
    def fn(report):
        report("extract", 0, 2)
        time.sleep(0.05)
        report("extract", 2, 2)
        report("fit", 0, 1)

    job = wait_status(manager.submit("train", fn), "done")
    assert list(job.stage_started) == ["extract", "fit"] and job.stage_started["fit"] >= job.stage_started[
        "extract"] + 0.04


def test_progress_is_visible_while_running(manager):
    reached, release = threading.Event(), threading.Event()

    def fn(report):
        report("extract", 1, 4)
        reached.set()
        release.wait(TIMEOUT_S)
        report("extract", 4, 4)
        report("fit", 1, 1)

    job = manager.submit("train", fn)
    assert reached.wait(TIMEOUT_S)
    assert job.progress == {"extract": (1, 4)} and job.message == "extract"
    release.set()
    wait_status(job, "done")
    assert list(job.progress.items()) == [("extract", (4, 4)), ("fit", (1, 1))]
    assert job.message == "fit"


def test_cancel_running_job_stops_at_next_report(manager):
    started, steps = threading.Event(), []

    def fn(report):
        for step in range(int(TIMEOUT_S * 100)):
            report("loop", step, 500)
            steps.append(step)
            started.set()
            time.sleep(0.01)
        return "finished"

    job = manager.submit("long", fn)
    assert started.wait(TIMEOUT_S)
    assert manager.cancel(job.id) is True
    wait_status(job, "cancelled")
    assert job.result is None and job.error is None
    assert len(steps) < 100
    assert manager.cancel(job.id) is False


def test_cancel_queued_job_never_runs(manager):
    started, release, ran = threading.Event(), threading.Event(), threading.Event()
    first = manager.submit("first", blocking(started, release))
    queued = manager.submit("queued", lambda report: ran.set())
    assert started.wait(TIMEOUT_S)
    assert manager.cancel(queued.id) is True
    assert queued.status == "cancelled" and queued.finished is not None
    assert manager.queue_position(queued.id) is None
    release.set()
    after = manager.submit("after", lambda report: "ok")
    wait_status(after, "done")
    assert first.status == "done" and queued.started is None and not ran.is_set()


def test_unexpected_error_is_captured_with_traceback(manager):
    def explode(report):
        raise ValueError("features have 512 columns, expected 1280\nsecond line")

    failed = manager.submit("explode", explode)
    wait_status(failed, "failed")
    assert failed.error == "ValueError: features have 512 columns, expected 1280"
    assert "explode" in failed.traceback and "ValueError" in failed.traceback
    survivor = manager.submit("next", lambda report: 42)
    assert wait_status(survivor, "done").result == 42


def test_transferscope_error_message_is_kept_verbatim(manager):
    message = "folder 'x' has no images; point --data at a folder with one subfolder per class"

    def fn(report):
        raise DataError(message)

    job = wait_status(manager.submit("data", fn), "failed")
    assert job.error == message and job.traceback is None


def test_unknown_ids_and_finished_jobs(manager):
    job = wait_status(manager.submit("quick", lambda report: None), "done")
    assert manager.get(job.id) is job
    assert manager.get("missing") is None
    assert manager.cancel("missing") is False
    assert manager.cancel(job.id) is False and job.status == "done"


def test_shutdown_cancels_active_jobs_and_refuses_new_ones():
    manager = JobManager()
    started = threading.Event()

    def fn(report):
        started.set()
        while True:
            report("spin", 0, 1)
            time.sleep(0.005)

    running = manager.submit("spin", fn)
    queued = manager.submit("queued", lambda report: None)
    assert started.wait(TIMEOUT_S)
    manager.shutdown()
    assert (running.status, queued.status) == ("cancelled", "cancelled")
    with pytest.raises(RuntimeError, match="shut down"):
        manager.submit("late", lambda report: None)


def test_only_the_newest_finished_jobs_are_remembered():
    manager = JobManager(keep_finished=2)
    try:
        done = [manager.submit(f"job {i}", lambda report, i=i: i) for i in range(4)]
        for job in done:
            wait_status(job, "done")
        started, release = threading.Event(), threading.Event()
        running = manager.submit("long", blocking(started, release))
        assert started.wait(TIMEOUT_S)
        assert [job.name for job in manager.jobs()] == ["long", "job 3", "job 2"]
        assert manager.get(done[0].id) is None and manager.get(running.id) is running
        release.set()
    finally:
        manager.shutdown()


# ---- one compute slot across processes ---------------------------------------------------------------

HOLD_SLOT = """
import sys, time
from core.jobs import compute_slot
with compute_slot(sys.argv[1]):
    open(sys.argv[2], "w").close()
    while not __import__("os").path.exists(sys.argv[3]):
        time.sleep(0.01)
"""


@pytest.fixture
def other_process(tmp_path):
    """A second process that holds the compute slot of `tmp_path/compute.lock` until `release()`."""
    lock, holding, done = tmp_path / "compute.lock", tmp_path / "holding", tmp_path / "done"
    child = subprocess.Popen([sys.executable, "-c", HOLD_SLOT, str(lock), str(holding), str(done)], cwd=ROOT)
    wait_for(holding.exists, timeout_s=30)
    yield lock, lambda: done.touch() or child.wait(TIMEOUT_S)
    done.touch()
    child.wait(TIMEOUT_S)


def test_jobs_wait_for_the_compute_slot_of_another_process(other_process):
    lock, release = other_process
    manager = JobManager(slot_path=lock)
    try:
        job = manager.submit("after the CLI", lambda report: "ran")
        wait_for(lambda: job.message == WAITING_FOR_SLOT)
        time.sleep(0.3)
        assert job.status == "queued" and job.started is None
        assert release() == 0
        assert wait_status(job, "done").result == "ran" and job.message == ""
    finally:
        manager.shutdown()


def test_cancel_while_waiting_for_the_slot(other_process):
    lock, _ = other_process
    manager = JobManager(slot_path=lock)
    try:
        ran = threading.Event()
        job = manager.submit("never", lambda report: ran.set())
        wait_for(lambda: job.message == WAITING_FOR_SLOT)
        assert manager.cancel(job.id)
        after = manager.submit("next", lambda report: "ok")  # the worker is free again, still queued behind the lock
        wait_for(lambda: after.message == WAITING_FOR_SLOT)
        assert job.status == "cancelled" and not ran.is_set()
    finally:
        manager.shutdown()


@pytest.mark.slow
def test_cli_waits_for_the_slot_held_by_the_dashboard(tiny_dir, tmp_path, image_size):
    cache = tmp_path / "cache"
    started, release = threading.Event(), threading.Event()
    manager = JobManager(slot_path=compute_slot_path(cache))
    try:
        # held until released: a CLI process can take well over 5 s to import torch on a busy machine
        manager.submit("dashboard job", blocking(started, release, timeout_s=300))
        assert started.wait(TIMEOUT_S)
        cli = subprocess.Popen([sys.executable, "-m", "core", "extract", "--data", str(tiny_dir), "--cache-dir",
                                str(cache), "--image-size", str(image_size), "--workers", "0", "--device", "cpu"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err = []
        threading.Thread(target=lambda: err.extend(cli.stderr), daemon=True).start()
        wait_for(lambda: WAITING_FOR_SLOT in "".join(err) or cli.poll() is not None, timeout_s=180)
        time.sleep(0.5)
        assert cli.poll() is None and not (cache / "features").exists(), "".join(err)
        release.set()
        assert cli.wait(300) == 0, "".join(err)
        assert json.loads(cli.stdout.read())["n"] == 35
    finally:
        release.set()
        manager.shutdown()
