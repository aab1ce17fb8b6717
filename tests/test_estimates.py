"""Estimates from the measured cost curve and progress with the time left (core.estimates)."""
import time

import pytest

from core.estimates import STEP_OVERHEAD_S, UNITS, StepProgress, duration, logreg_steps, svm_steps


def test_the_exact_svm_grows_faster_than_its_approximation_and_a_cached_kernel_costs_nothing():
    def total(steps):
        return sum(seconds for _, seconds in steps)
    exact = [total(svm_steps(True, n, 1280, 3)) for n in (5000, 10000)]
    approximate = [total(svm_steps(False, n, 1280, 3)) for n in (20000, 40000)]
    assert exact[1] / exact[0] > 3 and approximate[1] / approximate[0] < 2
    cached = svm_steps(True, 10000, 1280, 3, cached=True)
    assert cached[0] == ("kernel", STEP_OVERHEAD_S) and [label for label, _ in cached][1:] == [
        "fit", "fold 1/3", "fold 2/3", "fold 3/3"]
    assert [label for label, _ in logreg_steps((0.1, 1.0), 1000, 64, 4, 3)] == ["C = 0.1 folds", "C = 1 folds", "fit"]


def test_time_left_scales_the_estimate_by_how_the_steps_done_went(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    notes = []
    progress = StepProgress(lambda stage, done, total, note: notes.append((done, total, note)), "fit SVM",
                            [("kernel", 10.0), ("fit", 20.0), ("fold 1/1", 30.0)])
    progress.start("SVC on 9 images")
    assert notes[-1] == (0, UNITS, "SVC on 9 images; estimate about 60 s")
    now[0] += 20.0  # the kernel took twice its estimate: the rest is expected to as well
    progress.advance()
    assert notes[-1] == (17, UNITS, "fit next, about 100 s left")  # done: 10 of 60 estimated seconds
    now[0] += 10.0
    progress.advance()
    assert notes[-1] == (50, UNITS, "fold 1/1 next, about 30 s left")
    progress.advance()
    assert notes[-1] == (UNITS, UNITS, "done")


@pytest.mark.parametrize("seconds,text", [(40, "40 s"), (119, "119 s"), (600, "10 min"), (3599, "1 h 00 min"),
                                          (7500, "2 h 05 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text
