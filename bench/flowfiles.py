"""The benchmark's input files, made once per (traffic code, seed, size, rate, field mask) and cached.

- `stream.bin`: what the load generator streams: records of a 4-byte big-endian length
  and a serialized `GetFlowsResponse`, in time order. If the ingester's request carries
  a `field_mask`, each flow is masked here the way Hubble would mask it, so the stream
  is the one a real Hubble would send that request.
- `flows.jsonl`: the same flows, unmasked, as `hubble observe -o jsonpb` prints them
  (compact JSON, proto field names): the input of `flowlog replay` and of the baseline.
- `meta.json`: counts (HTTP, DNS), the time span, sizes.

The cache keeps the KEEP most recently used sets (each about 3.4 KB a flow).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask

from ingest.api.observer import observer_pb2

from . import traffic

CHUNK = 2000
FORMAT = 2
# Input sets kept in the cache, the most recently used; older ones are deleted.
KEEP = 3


@dataclass
class FlowFiles:
    stream: Path
    jsonl: Path
    flows: int
    http: int
    dns: int
    span_s: float
    cluster_rate: float
    stream_bytes: int
    jsonl_bytes: int
    out_of_order: int
    field_mask: list[str]
    seed: int
    newest_ns: int  # time of the newest flow: the last batch's checkpoint
    generated_s: float = 0.0
    cached: bool = False

    def as_dict(self) -> dict:
        data = asdict(self)
        data["stream"], data["jsonl"] = str(self.stream), str(self.jsonl)
        data["mean_message_bytes"] = round(self.stream_bytes / self.flows - 4, 1) if self.flows else 0
        data["mean_json_line_bytes"] = round(self.jsonl_bytes / self.flows, 1) if self.flows else 0
        return data


def _key(seed: int, flows: int, rate: float, mask: list[str]) -> str:
    """Changes with the generator's code, the parameters and FORMAT (bump it when the files change)."""
    text = json.dumps([FORMAT, seed, flows, rate, sorted(mask)])
    return hashlib.sha256(Path(traffic.__file__).read_bytes() + text.encode()).hexdigest()[:16]


def _to_json(chunk: list[bytes]) -> bytes:
    lines = []
    for raw in chunk:
        response = observer_pb2.GetFlowsResponse.FromString(raw)
        data = json_format.MessageToDict(response, preserving_proto_field_name=True)
        lines.append(json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def _masked(raw: bytes, mask: FieldMask) -> bytes:
    response = observer_pb2.GetFlowsResponse.FromString(raw)
    masked = observer_pb2.GetFlowsResponse(node_name=response.node_name, time=response.time)
    mask.MergeMessage(response.flow, masked.flow)
    return masked.SerializeToString()


def _chunks(generator, size: int):
    chunk = []
    for item in generator:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def make(cache_dir: Path, seed: int, flows: int, rate: float, field_mask: list[str] | None = None,
         log=print) -> FlowFiles:
    mask_paths = list(field_mask or [])
    directory = cache_dir / _key(seed, flows, rate, mask_paths)
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta_path.touch()  # recently used
        meta = json.loads(meta_path.read_text())
        meta.update(stream=Path(meta["stream"]), jsonl=Path(meta["jsonl"]), cached=True)
        return FlowFiles(**meta)
    directory.mkdir(parents=True, exist_ok=True)
    log(f"generating {flows:,} flows (seed {seed}) into {directory} (cached for the next runs)")
    started = time.monotonic()
    gen = traffic.Traffic(seed=seed, flows_per_second=rate)
    mask = FieldMask(paths=mask_paths) if mask_paths else None
    stream_path, jsonl_path = directory / "stream.bin", directory / "flows.jsonl"
    first_ns = last_ns = 0
    stream_bytes = jsonl_bytes = 0
    with open(stream_path, "wb") as stream, open(jsonl_path, "wb") as jsonl, \
            multiprocessing.get_context("fork").Pool(2) as pool:
        def chunks():
            nonlocal first_ns, last_ns, stream_bytes
            for chunk in _chunks(gen.serialized(flows), CHUNK):
                for raw in chunk:
                    record = _masked(raw, mask) if mask is not None else raw
                    stream.write(struct.pack(">I", len(record)))
                    stream.write(record)
                    stream_bytes += 4 + len(record)
                # Flows come out in time order: a chunk's first and last are enough.
                head = observer_pb2.GetFlowsResponse.FromString(chunk[0]).flow.time.ToNanoseconds()
                last_ns = observer_pb2.GetFlowsResponse.FromString(chunk[-1]).flow.time.ToNanoseconds()
                first_ns = first_ns or head
                yield chunk

        for text in pool.imap(_to_json, chunks()):
            jsonl.write(text)
            jsonl_bytes += len(text)
    http, dns = _count_kinds(jsonl_path)
    span_s = (last_ns - first_ns) / 1e9
    files = FlowFiles(stream_path, jsonl_path, flows, http, dns, round(span_s, 3),
                      round(flows / span_s, 1) if span_s else 0.0, stream_bytes, jsonl_bytes, gen.out_of_order,
                      mask_paths, seed, last_ns, round(time.monotonic() - started, 1))
    meta = files.as_dict()
    for key in ("mean_message_bytes", "mean_json_line_bytes", "cached"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta, indent=1))
    _prune(cache_dir)
    return files


def _prune(cache_dir: Path) -> None:
    entries = sorted(cache_dir.glob("*/meta.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for meta in entries[KEEP:]:
        shutil.rmtree(meta.parent, ignore_errors=True)


def _count_kinds(jsonl_path: Path) -> tuple[int, int]:
    """HTTP and DNS flows in the JSON lines (a cheap byte search; no other key holds an object named so)."""
    http = dns = 0
    with open(jsonl_path, "rb") as lines:
        for line in lines:
            if b'"http":{' in line:
                http += 1
            elif b'"dns":{' in line:
                dns += 1
    return http, dns


def read_stream(path: Path):
    """The messages of a stream file, as bytes."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        yield data[offset + 4:offset + 4 + length]
        offset += 4 + length
