"""What following the Hubble exporter's files costs, against `flowlog replay` of the same lines.

    python -m bench.exporter --flows 50000 [--out bench/results/exporter.json]

The bench's generated flows (`flowfiles.jsonl`, the exporter's line format) are written
into an exporter file in 10 MB files rotated as the exporter does; `flowlog run --source
file://` follows them (the embedded engine in its process, as on a node with the default
store) until its checkpoint holds the last line; then `flowlog replay` reads the same
lines in one file, in the same run. Reported for each: flows/s over the wall time, the
process's CPU seconds (with its children: replay's JSON workers) per flow, peak RSS.
The ratio is follow / replay flows/s. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import flowfiles, phases
from bench.procstat import cpu_seconds, peak_rss_mb
from ingest.pipeline.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent
ROTATE_BYTES = 10 << 20  # hubble-export-file-max-size-mb's default


def _write_rotated(jsonl: Path, directory: Path) -> tuple[Path, int]:
    """The lines as an exporter leaves them: backups of ROTATE_BYTES, then events.log."""
    directory.mkdir(parents=True)
    live = directory / "events.log"
    lines, size, handle, stamp = 0, 0, open(live, "wb"), 0
    with open(jsonl, "rb") as source:
        for line in source:
            if size + len(line) > ROTATE_BYTES:
                handle.close()
                live.rename(directory / f"events-2026-01-01T00-00-{stamp:02d}.000.log")
                stamp += 1
                handle, size = open(live, "wb"), 0
            handle.write(line)
            size += len(line)
            lines += 1
    handle.close()
    return live, lines


def follow(live: Path, lines: int, workdir: Path) -> dict:
    address = f"file://{live}"
    command = [sys.executable, "-m", "ingest", "run", "--source", address, "--store", f"chdb://{workdir / 'store'}",
               "--state-dir", str(workdir / "state"), "--metrics-address", ""]
    with open(workdir / "follow.log", "w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        cpu = rss = 0.0
        try:
            while True:
                cpu, rss = cpu_seconds(process.pid), max(rss, peak_rss_mb(process.pid))
                files = Checkpoint(workdir / "state", address).files if (workdir / "state").exists() else {}
                if files.get(str(live), ("", 0, 0))[2] == _lines_in(live):
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"flowlog run exited {process.returncode}: "
                                       f"{(workdir / 'follow.log').read_text()[-2000:]}")
                time.sleep(0.2)
            wall = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(timeout=60)
    return {"flows": lines, "wall_s": round(wall, 2), "flows_per_s": round(lines / wall, 1), "cpu_s": round(cpu, 2),
            "cpu_us_per_flow": round(cpu / lines * 1e6, 1), "peak_rss_mb": round(rss, 1), "command": " ".join(command)}


def _lines_in(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    files = flowfiles.make(ROOT / "bench" / ".cache", args.seed, args.flows, 2500.0,
                           log=lambda text: print(text, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="flowlog-bench-exporter-") as tmp:
        work = Path(tmp)
        live, lines = _write_rotated(files.jsonl, work / "hubble")
        backups = len(os.listdir(work / "hubble")) - 1
        print(f"following {lines:,} lines in {backups} backups and the file itself", file=sys.stderr)
        (work / "follow").mkdir()
        results = {"follow": follow(live, lines, work / "follow")}
        results["replay"] = phases.replay(files, work / "replay", [])
        replay = results["replay"]
        replay["cpu_us_per_flow"] = round(replay["cpu_s"] / replay["flows"] * 1e6, 1)
        results["ratio_follow_to_replay"] = round(results["follow"]["flows_per_s"] / replay["wall_flows_per_s"], 3)
    for name in ("follow", "replay"):
        r = results[name]
        print(f"{name:7} {r['flows']:>9,} flows  {r.get('flows_per_s' if name == 'follow' else 'wall_flows_per_s'):>9,.0f}"
              f" flows/s  {r['cpu_us_per_flow']:>6.1f} µs CPU a flow  peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"follow / replay: {results['ratio_follow_to_replay']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
