"""Progress bars that suit both a terminal and a log file.

On a terminal, :func:`progress_bar` is tqdm as usual. When the bar's stream (stderr) is
not a terminal (a SLURM log, ``2> file``, CI), tqdm's redraws (several a second, joined by
carriage returns) would flood the log with one endless line, so the bar instead prints a
plain line when it starts, then at most one every ``AUDIOGEN_PROGRESS_INTERVAL`` seconds
(default :data:`LOG_INTERVAL_S`), then one when it ends, as pip and the Hugging Face tools
do. Every command's bars (generate, prep, LM and codec training, FAD, codec) come from here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

#: Seconds between two progress lines in a log (override: $AUDIOGEN_PROGRESS_INTERVAL)
LOG_INTERVAL_S = 30.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_interval() -> float:
    raw = os.environ.get("AUDIOGEN_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(raw)) if raw else LOG_INTERVAL_S
    except ValueError:
        return LOG_INTERVAL_S


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def stderr_is_terminal() -> bool:
    """Whether live (redrawn) bars suit stderr; other libraries' bars (datasets) are turned off when not."""
    return _is_terminal(sys.stderr)


@contextlib.contextmanager
def datasets_bars(progress: bool) -> Iterator[None]:
    """The Hugging Face datasets library's own bars (``save_to_disk``, ``map``) off inside the block unless
    ``progress`` and stderr is a terminal (their redraws would flood a log), then as they were."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    were_on = is_progress_bar_enabled()
    if not progress or not stderr_is_terminal():
        disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            enable_progress_bars()


class _Lines:
    """The stream tqdm writes to, as whole lines: carriage returns, cursor moves and the
    padding of a redraw are dropped, an empty redraw writes nothing."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, s: str) -> None:
        line = _ANSI.sub("", s).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


class _LogBar(tqdm):
    """tqdm whose redraws (from ``update``, ``set_postfix`` or refresh) reach the log at most
    once per interval; the first and the closing line always do."""

    def __init__(self, *args, interval: float, **kwargs):
        self._interval, self._last_line = interval, None
        super().__init__(*args, **kwargs)

    def refresh(self, nolock=False, lock_args=None):
        now = time.monotonic()
        if self._last_line is not None and now - self._last_line < self._interval:
            return False
        self._last_line = now
        return super().refresh(nolock=nolock, lock_args=lock_args)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; a few plain lines (see the module doc) otherwise."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    kwargs.update(file=_Lines(stream), leave=True, dynamic_ncols=False, ascii=True)
    return _LogBar(iterable, interval=log_interval(), **kwargs)
