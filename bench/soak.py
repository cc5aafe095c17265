#!/usr/bin/env python3
"""Soak: the fault-injection schedules of tests/test_faults.py, for as many seeds as you like.

    python bench/soak.py --seeds 100 --start 1000

Each seed is one schedule of stream drops, failing and ambiguous inserts, store outages
and SIGKILLs, run by `tests.test_faults.run_schedule` and checked by the test's own
assertions (every flow the server sent stored exactly once, gaps and ledger balanced).
Prints one line per seed and a summary; exits 1 if any seed failed. The test suite runs
seeds 0..29; soak runs others to find the rare schedule that breaks something.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)

import tests.test_faults as faults  # noqa: E402


def run_seed(seed: int, workdir: Path, derive: str = "ingester") -> tuple[bool, str, list[str], int]:
    """(passed, failure text, run history, flows expected) of one schedule."""
    recorded: dict = {}
    original = faults.run_schedule

    def recording(seed_, tmp_path, derive_):
        result = original(seed_, tmp_path, derive_)
        recorded["history"] = result[1]
        recorded["flows"] = len(result[3]["audit"])
        return result

    faults.run_schedule = recording  # the test's checks, on the schedule's result as it ran
    try:
        faults.test_fault_schedule_stores_every_flow_exactly_once(seed, derive, workdir)
        return True, "", recorded.get("history", []), recorded.get("flows", 0)
    except Exception as err:  # AssertionError from the checks, or a worker that failed
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        return False, text, recorded.get("history", []), recorded.get("flows", 0)
    finally:
        faults.run_schedule = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--start", type=int, default=1000, help="first seed (default 1000; the tests use 0..29)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    parser.add_argument("--derive", choices=["ingester", "store"], default="ingester",
                        help="who fills the flow tables (store.derive; default ingester)")
    parser.add_argument("--keep-failed", action="store_true", help="keep the state directory of failing seeds")
    args = parser.parse_args(argv)

    failed: list[tuple[int, str, Path | None]] = []
    durations = []
    started = time.monotonic()
    for seed in range(args.start, args.start + args.seeds):
        workdir = Path(tempfile.mkdtemp(prefix=f"flowlog-soak-{seed}-"))
        seed_started = time.monotonic()
        passed, error, history, flows = run_seed(seed, workdir, args.derive)
        seconds = time.monotonic() - seed_started
        durations.append(seconds)
        runs = "; ".join(history) if history else "-"
        status = "ok  " if passed else "FAIL"
        print(f"seed {seed:>6}  {status}  {seconds:5.1f} s  {flows:4d} flows  {runs}", flush=True)
        if passed or not args.keep_failed:
            shutil.rmtree(workdir, ignore_errors=True)
        if not passed:
            first_line = error.splitlines()[0] if error else "failed"
            print(f"             {first_line[:400]}", flush=True)
            failed.append((seed, first_line, workdir if args.keep_failed else None))
            if args.fail_fast:
                break
    total = len(durations)
    print(f"\n{total} seeds ({args.start}..{args.start + total - 1}) in {time.monotonic() - started:.0f} s "
          f"(mean {sum(durations) / total:.1f} s, max {max(durations):.1f} s): "
          f"{total - len(failed)} passed, {len(failed)} failed")
    for seed, error, kept in failed:
        print(f"  seed {seed}: {error[:300]}" + (f" (state kept in {kept})" if kept else ""))
    if failed:
        print(f"  re-run one: python bench/soak.py --start {failed[0][0]} --seeds 1 --keep-failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
