"""Where `shoal run` writes: jobs' output to stdout and stderr, the progress bar at the bottom.

The bar is one line on stderr, drawn only when stderr is a terminal. Before any output goes
to the same terminal the bar's line is cleared, the output written whole, and the bar drawn
again below it, so output scrolls above the bar and neither is cut into the other. Output to
a pipe or a file is written as it is: no bar, no wrapping, no control sequences.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import BinaryIO

CLEAR_LINE = b"\r\x1b[K"
REDRAW_EVERY_SECONDS = 0.2


def _is_terminal(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False


class Terminal:
    def __init__(self, *, bar: bool, stdout: BinaryIO | None = None,
                 stderr: BinaryIO | None = None):
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer
        self.bar = bar and _is_terminal(self.stderr)
        # Output to stdout shares the bar's screen only when both are that terminal.
        self._stdout_on_screen = self.bar and _is_terminal(self.stdout)
        self._text = ""
        self._shown = False
        self._drawn_at = 0.0

    def write(self, data: bytes, *, stderr: bool = False) -> None:
        """Write a piece of a job's output whole, above the bar."""
        if not data:
            return
        target = self.stderr if stderr else self.stdout
        on_screen = self.bar and (stderr or self._stdout_on_screen)
        if on_screen:
            self._clear()
            if not data.endswith(b"\n"):
                data += b"\n"  # the bar must not continue a line of output
        try:
            target.write(data)
            target.flush()
        except BrokenPipeError:
            _quiet_broken_pipe(target)
        if on_screen:
            self._draw()

    def status(self, text: str, *, force: bool = False) -> None:
        """Set the bar's text; redrawn at most five times a second unless forced."""
        self._text = text
        if not self.bar:
            return
        now = time.monotonic()
        if force or now - self._drawn_at >= REDRAW_EVERY_SECONDS:
            self._draw()

    def close(self) -> None:
        """Take the bar away (the summary follows in its place)."""
        if self.bar:
            self._clear()

    def _clear(self) -> None:
        if self._shown:
            self.stderr.write(CLEAR_LINE)
            self.stderr.flush()
            self._shown = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        text = self._text[: max(width - 1, 10)]  # never wraps: a wrapped bar cannot be cleared
        self.stderr.write(CLEAR_LINE + text.encode("utf-8", "replace"))
        self.stderr.flush()
        self._shown = True
        self._drawn_at = time.monotonic()


def _quiet_broken_pipe(target: BinaryIO) -> None:
    """The reader went away (`shoal run ... | head`): output is dropped from here on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, target.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def bar_text(label: str, *, done: int, failed: int, total: int | None, running: int,
             elapsed: float, input_open: bool, width: int = 24) -> str:
    """`jobs.txt ━━━━━━━━──────── 120/3000 · 2 running · 1 failed · 0:12 · ETA 1:40`."""
    ended = done + failed
    known = total if total is not None else ended
    fraction = ended / known if known else 0.0
    filled = int(fraction * width)
    bar = "━" * filled + "─" * (width - filled)
    count = f"{ended}/{known}{'+' if input_open else ''}"
    parts = [f"{label} {bar} {count}", f"{running} running"]
    if failed:
        parts.append(f"{failed} failed")
    parts.append(_clock(elapsed))
    if ended and known > ended and not input_open:
        parts.append("ETA " + _clock(elapsed / ended * (known - ended)))
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
