"""The torch thread count of the live mapping, chosen by measuring it, and re-checked while it runs.

On an idle 2-core machine a 1024² map is fastest with 2 torch threads. When another process keeps one
core busy (Micro-Manager, a camera driver, a training, a virus scan), every parallel region of a 2-thread
map waits at its barrier for the thread the scheduler took away: measured on this project's 2-core EPYC
with one core busy, 70–81 ms median per 1024² map with 2 threads against 22–24 ms with 1. Which count
wins changes while a window stays open all day, so :class:`ThreadTuner` keeps the faster one and now and
then tries the others for a few frames.

The count is set with :func:`torch.set_num_threads` in the thread that maps: with OpenMP it applies to
that thread's own parallel regions, not to other threads (the GUI, a simulated camera rendering).
Batches over files (``livepsf map``, ``livepsf depth``) choose the same way, quicker: :func:`batch_threads`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch

__all__ = ["BATCH_EXPLORE_EVERY", "BATCH_TRIAL_FRAMES", "ThreadTuner", "batch_threads"]

#: A batch decides after its first frames (this many with each count): a batch may be a few frames long,
#: and the median of three is not swayed by one slow call (a first-time code path costs ~250 ms once).
BATCH_TRIAL_FRAMES = 3
#: ... and re-checks every this many frames, as the machine's load changes during a long batch.
BATCH_EXPLORE_EVERY = 50

T = TypeVar("T")


class ThreadTuner:
    """Runs calls with the torch thread count that has lately been fastest.

    It starts with the first candidate; after ``trial_frames`` calls it tries each other candidate for
    ``trial_frames`` calls, switches when that one's median time is below ``margin`` times the current
    one's (the last ``trial_frames`` calls of each, so both were measured under the same load), and
    repeats every ``explore_every`` calls. Exploring costs at most ``trial_frames`` slower calls per
    ``explore_every``.

    Parameters
    ----------
    candidates
        Thread counts to choose from, most preferred first; default: the calling thread's current count
        and 1.
    trial_frames
        Calls per measurement (the median of these decides).
    explore_every
        Calls between two rounds of trying the other counts.
    margin
        A candidate replaces the current count only when its median time is below ``margin`` times the
        current one's (hysteresis: noise does not make it flip back and forth).
    clock
        Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, candidates: Sequence[int] | None = None, *, trial_frames: int = 8,
                 explore_every: int = 200, margin: float = 0.85,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if candidates is None:
            candidates = [torch.get_num_threads(), 1]
        unique = list(dict.fromkeys(int(c) for c in candidates))
        if not unique or min(unique) < 1:
            raise ValueError(f"thread counts must be positive, got {list(candidates)}")
        if trial_frames < 1 or explore_every < 1 or not 0.0 < margin <= 1.0:
            raise ValueError("trial_frames and explore_every must be >= 1 and margin in (0, 1]")
        self.candidates: tuple[int, ...] = tuple(unique)
        self.trial_frames = int(trial_frames)
        self.explore_every = int(explore_every)
        self.margin = float(margin)
        self._clock = clock
        self._current = unique[0]
        self._seconds: dict[int, deque[float]] = {c: deque(maxlen=self.trial_frames) for c in unique}
        self._queue: list[int] = []  # candidates still to try in this round
        self._trial_left = 0
        self._calls_until_round = self.trial_frames  # the first round as soon as the current count is measured
        self.switches = 0

    @property
    def threads(self) -> int:
        """The count the next call runs with (a candidate on trial, or the current choice)."""
        return self._queue[0] if self._trial_left > 0 else self._current

    @property
    def current(self) -> int:
        """The count chosen so far (what runs between trials)."""
        return self._current

    def median_ms(self, threads: int) -> float:
        """Median time of the last calls with ``threads`` threads in ms (``nan`` before any)."""
        seconds = self._seconds.get(threads)
        return float(np.median(seconds)) * 1e3 if seconds else float("nan")

    def apply(self) -> int:
        """Set :attr:`threads` torch threads in the calling thread, untimed (warm-up calls); returns it."""
        threads = self.threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def run(self, call: Callable[[], T]) -> T:
        """``call()`` with :attr:`threads` torch threads in this thread, timed. Exceptions pass through
        unrecorded (a failed frame says nothing about speed)."""
        threads = self.apply()
        t0 = self._clock()
        result = call()
        self._record(threads, self._clock() - t0)
        return result

    def _record(self, threads: int, seconds: float) -> None:
        self._seconds[threads].append(seconds)
        if self._trial_left > 0:
            self._trial_left -= 1
            if self._trial_left == 0:
                self._decide(self._queue.pop(0))
                if self._queue:
                    self._trial_left = self.trial_frames
            return
        self._calls_until_round -= 1
        if self._calls_until_round <= 0 and len(self.candidates) > 1:
            self._queue = [c for c in self.candidates if c != self._current]
            self._trial_left = self.trial_frames
            self._calls_until_round = self.explore_every

    def _decide(self, tried: int) -> None:
        if self.median_ms(tried) < self.margin * self.median_ms(self._current):
            self._current = tried
            self.switches += 1


@contextmanager
def batch_threads(threads: int | None = None, *, clock: Callable[[], float] = time.perf_counter
                  ) -> Iterator[ThreadTuner]:
    """The torch thread count of a batch of frames mapped in the calling thread; restored afterwards.

    Map each frame through the tuner's :meth:`~ThreadTuner.run` (for example
    ``livepsf.mapping.map_image_file(..., run=tuner.run)``).

    Parameters
    ----------
    threads
        A fixed count. ``None``: measured, as in the live loop: the first :data:`BATCH_TRIAL_FRAMES`
        frames with 1 thread, the next ones with torch's present count, then the faster, re-checked
        every :data:`BATCH_EXPLORE_EVERY` frames. One thread comes first because it is the safe
        guess: on an idle machine it costs the trial frames up to twice their time, on a busy one
        torch's count (2 here) costs them three to ten times theirs.
    clock
        Seconds, monotonic (tests pass a fake one).

    Raises
    ------
    ValueError
        ``threads`` is below 1.
    """
    candidates = [1, torch.get_num_threads()] if threads is None else [threads]
    tuner = ThreadTuner(candidates, trial_frames=BATCH_TRIAL_FRAMES, explore_every=BATCH_EXPLORE_EVERY, clock=clock)
    previous = torch.get_num_threads()
    try:
        yield tuner
    finally:
        torch.set_num_threads(previous)
