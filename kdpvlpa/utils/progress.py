"""Progress of long loops, readable in a terminal and in a log file.

A terminal gets one line redrawn in place. A log (stderr or stdout
redirected to a file, a batch job) gets a plain line each time another tenth
of the work is done (after each update that is larger) and at the end, so a
run that takes an hour still shows how far it got.
"""

import sys
import time


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts finished items and reports them on a stream.

    Args:
        total: int. Items to do.
        label: str. Start of every line, e.g. "captions".
        stream: file-like, or None for `sys.stderr` at the time of writing.
        unit: str. What is counted, e.g. "images".
        hidden: bool. Count without writing anything.

    Use it as a context manager, so the terminal line is ended:

    >>> import io
    >>> log = io.StringIO()
    >>> with Progress(4, "caching", stream=log, unit="images") as bar:
    ...     bar.update(2)
    ...     bar.update(2)
    >>> print(log.getvalue().splitlines()[-1].split(" (")[0])
    caching: 4/4 images
    """

    def __init__(self, total, label, stream=None, unit="items", hidden=False):
        self.total = int(total)
        self.label = label
        self.unit = unit
        self.hidden = hidden
        self.done = 0
        self._stream = stream
        self._start = time.monotonic()
        self._open_line = False
        self._pending = False
        self._drawn = float("-inf")
        # The remaining time is estimated from the rate after the first
        # update, or after the last `update(0)`: that leaves out start-up (a
        # model loading) and items an earlier run finished (reported in one go).
        self._first = None

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    def _is_terminal(self):
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # closed stream
            return False

    def line(self):
        """The current state: count, percentage, elapsed and remaining time."""
        text = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if self.total:
            elapsed = time.monotonic() - self._start
            text += f" ({100 * self.done // self.total}%, {_duration(elapsed)}"
            if self._first is not None and self._first[1] < self.done < self.total:
                since, count = self._first
                rate = (self.done - count) / max(time.monotonic() - since, 1e-9)
                left = (self.total - self.done) / rate
                if left >= 1:  # "about 0s left" says nothing
                    text += f", about {_duration(left)} left"
            text += ")"
        return text

    def update(self, n=1):
        """Adds `n` finished items and writes a line when one is due.

        `update(0)` marks the start of the timed work (say, once a model has
        loaded): the remaining time is estimated from the rate after it.
        """
        before = self.done
        self.done = min(self.total, self.done + n)
        if self._first is None or n == 0:
            self._first = (time.monotonic(), self.done)
        if self.hidden or self.total == 0:
            return
        if self._is_terminal():
            now = time.monotonic()
            if self.done < self.total and now - self._drawn < 0.2:
                self._pending = True  # drawn by the next update or `refresh`
                return
            self._draw(now)
        elif (self.done == self.total and before < self.total) or (
            self.done * 10 // self.total != before * 10 // self.total
        ):
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _draw(self, now):
        self._drawn = now
        self._pending = False
        self.stream.write("\r" + self.line() + "\033[K")
        self._open_line = True

    def refresh(self):
        """Draws a terminal state that a quick run of updates left undrawn.

        Call it before a long wait, so that the line shows the latest count.
        """
        if self._pending and not self.hidden:
            self._draw(time.monotonic())
            self.stream.flush()

    def break_line(self):
        """Ends the terminal line, so that another message starts on its own."""
        self.refresh()
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.break_line()
        return False
