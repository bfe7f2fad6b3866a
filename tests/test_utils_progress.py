import io

import pytest

from kdpvlpa.utils import progress as progress_module
from kdpvlpa.utils.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def test_log_gets_a_line_at_every_tenth(clock):
    log = io.StringIO()
    with Progress(25, "caching", stream=log, unit="images") as bar:
        for _ in range(25):
            bar.update()
    lines = log.getvalue().splitlines()
    # done * 10 // 25 changes at 3, 5, 8, 10, 13, 15, 18, 20, 23 and 25.
    assert [line.split(" (")[0] for line in lines] == [
        f"caching: {n}/25 images" for n in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]
    assert lines[-1] == "caching: 25/25 images (100%, 0s)"
    assert "\r" not in log.getvalue()


def test_update_zero_restarts_the_estimate(clock):
    # 5 of 20 reported at once before a model loaded (300 s), update(0) once
    # it is ready, then 3 in 30 s: 0.1 images/s, 12 left, 120 s.
    bar = Progress(20, "captions", stream=io.StringIO())
    bar.update(5)
    clock[0] += 300
    bar.update(0)
    clock[0] += 30
    bar.update(3)
    assert bar.line().endswith("about 2m00s left)")


def test_remaining_time_leaves_out_the_first_update(clock):
    # 10 images of 20 were done by an earlier run (one update at t = 0),
    # then 2 more in 40 s: 0.05 images/s, 8 left, 160 s.
    log = io.StringIO()
    bar = Progress(20, "captions", stream=log, unit="images")
    clock[0] += 300  # a model loading
    bar.update(10)
    clock[0] += 40
    bar.update(2)
    assert bar.line() == "captions: 12/20 images (60%, 5m40s, about 2m40s left)"
    fast = Progress(100, "x", stream=io.StringIO())
    fast.update(0)
    clock[0] += 1
    fast.update(98)  # 2 left at 98 a second: under a second, not shown
    assert fast.line() == "x: 98/100 items (98%, 1s)"


def test_terminal_line_is_redrawn_and_ended(clock):
    term = Terminal()
    with Progress(3, "captions", stream=term, unit="images") as bar:
        bar.update()
        bar.update()  # within 0.2 s of the last drawing: skipped
        clock[0] += 1
        bar.update()
    out = term.getvalue()
    assert out.count("\r") == 2
    assert out.endswith("captions: 3/3 images (100%, 1s)\x1b[K\n")
    assert "1/3 images" in out and "2/3" not in out


def test_an_undrawn_state_is_drawn_before_a_wait_and_at_the_end(clock):
    # A batch of records arrives at once: the throttle skips all but the first
    # drawing; refresh (before the next long wait) and the end draw the rest.
    term = Terminal()
    with Progress(100, "captions", stream=term, unit="images") as bar:
        for _ in range(40):
            bar.update()
        assert term.getvalue().endswith("1/100 images (1%, 0s)\x1b[K")
        bar.refresh()
        assert "40/100 images (40%, 0s" in term.getvalue().rsplit("\r", 1)[1]
        bar.refresh()  # nothing new: no drawing
        assert term.getvalue().count("\r") == 2
        bar.update(5)
    assert term.getvalue().rsplit("\r", 1)[1].startswith("captions: 45/100 images")
    assert term.getvalue().endswith("\n")


def test_break_line_only_after_a_terminal_line(clock):
    term = Terminal()
    bar = Progress(2, "x", stream=term)
    bar.break_line()
    assert term.getvalue() == ""
    bar.update()
    bar.break_line()
    assert term.getvalue().endswith("\n") and term.getvalue().count("\n") == 1


def test_hidden_and_empty_write_nothing(clock):
    log = Terminal()
    with Progress(5, "x", stream=log, hidden=True) as bar:
        bar.update(5)
    with Progress(0, "y", stream=log) as bar:
        bar.update(0)
    assert log.getvalue() == "" and bar.done == 0


@pytest.mark.parametrize("seconds, text", [(59.4, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert progress_module._duration(seconds) == text
