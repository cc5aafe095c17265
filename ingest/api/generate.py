"""Regenerate the Python code for the Hubble API protos (grpcio-tools).

    python -m ingest.api.generate          # rewrite the generated files
    python -m ingest.api.generate --check  # exit 1 if they are stale

The protos are compiled with the repository root as the include path, so the
generated modules import each other as `ingest.api.<package>.<name>_pb2`.
"""

import argparse
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
REPO_ROOT = API_DIR.parent.parent
PROTOS = sorted(p.relative_to(REPO_ROOT).as_posix() for p in API_DIR.rglob("*.proto"))
SERVICE_PROTOS = {"ingest/api/observer/observer.proto"}


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into out_dir; return the generated files (relative)."""
    from grpc_tools import protoc
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    for proto in PROTOS:
        args = ["protoc", f"-I{REPO_ROOT}", f"-I{well_known}",
                f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
        if proto in SERVICE_PROTOS:
            args.append(f"--grpc_python_out={out_dir}")
        if protoc.main(args + [str(REPO_ROOT / proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    # Under the API's own directory only: out_dir may be the repository, with a virtualenv in it.
    return sorted(p.relative_to(out_dir) for p in (out_dir / API_DIR.relative_to(REPO_ROOT)).rglob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Generated files that differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generated = generate(fresh)
        committed = sorted(p.relative_to(REPO_ROOT) for p in API_DIR.rglob("*_pb2*.py*"))
        stale = {str(p) for p in set(committed) ^ set(generated)}
        for rel in generated:
            target = REPO_ROOT / rel
            if target.exists() and target.read_bytes() != (fresh / rel).read_bytes():
                stale.add(str(rel))
        return sorted(stale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name} (run: python -m ingest.api.generate)", file=sys.stderr)
        return 1 if stale else 0
    for old in API_DIR.rglob("*_pb2*.py*"):
        old.unlink()
    for rel in generate(REPO_ROOT):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
