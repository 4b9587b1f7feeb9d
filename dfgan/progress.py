"""Progress that a terminal and a log file can both show.

On a terminal, a tqdm bar. On anything else (stderr redirected to a file, a CI log, a job scheduler), a bar's
carriage-return redraws are noise, or nothing at all once it is hidden: there, one plain status line is printed
when the work starts, then at most every ``every_s`` seconds (``train.status_every_s``, default 30), and when it
ends, as long-running trainers do::

    train full: 1200/6000 steps (20.0%) | loss_d 0.512, loss_g 1.234 | 5.41 steps/s | 3m41s elapsed, ETA 14m48s

Both kinds take tqdm's ``update``, ``set_postfix``, ``close`` and ``with``, so a caller builds one with
``progress_bar`` (or wraps an iterable with ``progress_iter``) and does not care which it got.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

DEFAULT_EVERY_S = 30.0
_interval = {"every_s": DEFAULT_EVERY_S}


def set_interval(every_s: float) -> float:
    """Seconds between status lines for the bars made from now on in this process (a run sets its
    ``train.status_every_s``); returns the previous value."""
    previous = _interval["every_s"]
    _interval["every_s"] = float(every_s)
    return previous


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def format_seconds(s: float) -> str:
    """``3m41s``, ``1h02m``, ``12s``; ``?`` for an unknown time."""
    if s != s or s in (float("inf"), float("-inf")):
        return "?"
    s = int(round(max(s, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class StatusLines:
    """Plain status lines (see the module docstring): what ``progress_bar`` gives a stream that is no terminal."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", initial: int = 0,
                 every_s: float | None = None, stream: TextIO | None = None, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.every_s = _interval["every_s"] if every_s is None else float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.t0 = self.t_last = clock()
        self.n_last = self.n
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self._print(self.line(rate=float("nan")))

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = dict(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.t_last >= self.every_s:
            rate = (self.n - self.n_last) / (now - self.t_last) if now > self.t_last else float("nan")
            self._print(self.line(rate=rate, now=now))
            self.t_last, self.n_last = now, self.n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        done = self.n - self.initial
        rate = done / (now - self.t0) if now > self.t0 else float("nan")
        self._print(self.line(rate=rate, now=now, final=True))

    def line(self, *, rate: float, now: float | None = None, final: bool = False) -> str:
        """One status line: count (of total, %), postfix values, rate over the last interval (the whole run in
        the final line), elapsed time and ETA (from the average rate since the start)."""
        now = self.clock() if now is None else now
        elapsed = now - self.t0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"
                 + (f" ({self.n / self.total:.1%})" if self.total else "")]
        if self.postfix:
            parts.append(", ".join(f"{k} {v}" for k, v in self.postfix.items()))
        if rate == rate:
            parts.append(f"{rate:.3g} {self.unit}s/s")
        timing = f"{format_seconds(elapsed)} elapsed"
        if final:
            timing += ", done"
        elif self.total and self.n > self.initial:
            average = (self.n - self.initial) / elapsed if elapsed > 0 else float("nan")
            timing += f", ETA {format_seconds((self.total - self.n) / average)}"
        parts.append(timing)
        return " | ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> StatusLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None


def progress_bar(total: int | None, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True,
                 leave: bool = True, every_s: float | None = None, stream: TextIO | None = None):
    """A tqdm bar on a terminal, ``StatusLines`` elsewhere, nothing when not ``enabled``; ``stream`` defaults to
    stderr, ``every_s`` to the interval ``set_interval`` set (``DEFAULT_EVERY_S``)."""
    if not enabled:
        return _NoProgress()
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                    file=stream)
    return StatusLines(total, desc, unit=unit, initial=initial, every_s=every_s, stream=stream)


def progress_iter(items: Iterable, total: int | None, desc: str, **kw: Any) -> Iterator:
    """Yield from ``items``, one ``progress_bar`` step per item (keywords as ``progress_bar``'s)."""
    with progress_bar(total, desc, **kw) as bar:
        for item in items:
            yield item
            bar.update(1)
