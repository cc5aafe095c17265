"""The compiled receive floor: bench/receive_floor.cc, a C++ gRPC client, against the same stream.

    python -m bench.receive_floor ADDRESS EXPECTED

What receiving alone costs a client outside Python (the grpc++ library Debian ships,
`apt-get install g++ pkg-config libgrpc++-dev`), on the gRPC core grpcio shares: the
floor under any design of the ingester built on that core, compiled or not. Built once
into the bench cache (keyed by the source and the library's version); `build` returns
None, with the reason logged, where the compiler or the library is missing, and the
bench reports the Python client's numbers only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ingest.config import SourceConfig
from ingest.sources.hubble import flows_request

SOURCE = Path(__file__).resolve().parent / "receive_floor.cc"


def library_version() -> str | None:
    """grpc++'s version as pkg-config reports it; None where it is not installed."""
    if shutil.which("pkg-config") is None:
        return None
    done = subprocess.run(["pkg-config", "--modversion", "grpc++"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def build(cache_dir: Path, log) -> Path | None:
    """The client's binary, compiled on first use; None where it cannot be built here."""
    version = library_version()
    compiler = shutil.which("g++")
    if version is None or compiler is None:
        log("  compiled receive floor: not measured (needs g++, pkg-config and libgrpc++-dev)")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = cache_dir / f"receive-floor-{key}"
    if binary.exists():
        return binary
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True,
                           check=True).stdout.split()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    done = subprocess.run([compiler, "-O2", "-o", str(partial), str(SOURCE), *flags], capture_output=True, text=True)
    if done.returncode != 0:
        log(f"  compiled receive floor: not measured, g++ exited {done.returncode}: {done.stderr[-500:]}")
        return None
    partial.rename(binary)
    log(f"  compiled receive floor: built {binary.name} against grpc++ {version}")
    return binary


class FloorError(RuntimeError):
    """The compiled client did not measure: the bench goes on without its numbers."""


def receive(binary: Path, address: str, expected: int, timeout: float) -> dict:
    """One run of the compiled client: messages/s, and its CPU split into user and system."""
    request = flows_request(SourceConfig(address=address), 0).SerializeToString()
    try:
        done = subprocess.run([str(binary), address, str(expected)], input=request, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FloorError(f"{binary.name} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise FloorError(f"{binary.name} exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    result = json.loads(done.stdout)
    result["us_per_message"] = round(1e6 * result["cpu_s"] / result["messages"], 1)
    return result


if __name__ == "__main__":
    built = build(Path(__file__).resolve().parent / ".cache", lambda text: print(text, file=sys.stderr))
    if built is None:
        sys.exit(1)
    print(json.dumps(receive(built, sys.argv[1], int(sys.argv[2]), timeout=600)), flush=True)
