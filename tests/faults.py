"""Fault injection around the real ClickHouse client: calls that fail before they are
sent, calls that land and then report failure (the ambiguous case), stretches of
outage, and the process killed with SIGKILL just before or just after a call."""

from __future__ import annotations

import os
import random
import signal
import threading

FAIL_BEFORE, FAIL_AFTER, CRASH_BEFORE, CRASH_AFTER = "fail_before", "fail_after", "crash_before", "crash_after"


class InjectedFault(ConnectionError):
    pass


def plan(seed: int, run: int, may_crash: bool, horizon: int = 80) -> dict[int, str]:
    """Call number -> fault, seeded; at most one crash, and only where allowed."""
    rng = random.Random(f"{seed}:{run}")
    faults = {}
    for call in range(horizon):
        roll = rng.random()
        if roll < 0.08:
            faults[call] = FAIL_BEFORE
        elif roll < 0.14:
            faults[call] = FAIL_AFTER
    if rng.random() < 0.4:
        start = rng.randrange(horizon)
        for call in range(start, start + rng.randint(5, 20)):
            faults[call] = FAIL_BEFORE
    if may_crash:
        faults[rng.randrange(2, 40)] = rng.choice([CRASH_BEFORE, CRASH_AFTER])
    return faults


class FaultyClient:
    """Delegates to a real clickhouse-connect client; `insert` and `query` follow the plan,
    and fail before they are sent while `down` is set (an outage)."""

    def __init__(self, client, faults: dict[int, str] | None = None):
        self._client = client
        self._faults = faults or {}
        self.calls = 0
        self.down = threading.Event()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def _call(self, method, *args, **kwargs):
        fault = self._faults.get(self.calls)
        self.calls += 1
        if self.down.is_set():
            raise InjectedFault("injected: the store is down")
        if fault == CRASH_BEFORE:
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == FAIL_BEFORE:
            raise InjectedFault(f"injected: call {self.calls - 1} failed before it was sent")
        result = method(*args, **kwargs)
        if fault == CRASH_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == FAIL_AFTER:
            raise InjectedFault(f"injected: call {self.calls - 1} landed but its answer was lost")
        return result

    def insert(self, *args, **kwargs):
        return self._call(self._client.insert, *args, **kwargs)

    def query(self, *args, **kwargs):
        return self._call(self._client.query, *args, **kwargs)

    def raw_insert(self, *args, **kwargs):  # the input table's inserts (store.derive = store)
        return self._call(self._client.raw_insert, *args, **kwargs)
