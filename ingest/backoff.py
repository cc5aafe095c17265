"""Capped exponential backoff with full jitter, for everything that is retried.

Each wait is drawn uniformly between 0 and the current delay, which then doubles up to
the cap; `reset` goes back to the first delay once the thing retried works again. Full
jitter keeps the DaemonSet's pods from retrying a shared store or Relay in step.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float):
        self.initial_s = initial_s
        self.max_s = max_s
        self._delay = initial_s

    def next_wait(self) -> float:
        """Seconds to wait before the next try."""
        wait = random.uniform(0, self._delay)
        self._delay = min(self._delay * 2, self.max_s)
        return wait

    def reset(self) -> None:
        self._delay = self.initial_s
