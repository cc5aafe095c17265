"""What decoding costs a node: the decoder alone on the benchmark's messages, CPU per flow.

    python -m bench.decode STREAM_FILE [ROUNDS] [--derive-in-store]

Parses every message of the stream file (what the load generator sends) first, then
decodes all of them with a fresh `Decoder` in each of ROUNDS rounds (default 7), with
the cycle collector off as in `flowlog run`, and prints one JSON object: the CPU
microseconds a flow of the best and the median round. With --derive-in-store, the decoder
makes the rows of flow_input (store.derive = store) instead of the tables' rows. Nothing else runs in the process,
so rounds of two builds interleaved compare their decoders directly (README, issue 14).
"""

from __future__ import annotations

import gc
import json
import statistics
import struct
import sys
import time

from ingest.api.observer import observer_pb2
from ingest.decode.decoder import Decoder


def read_stream(path: str) -> list[observer_pb2.GetFlowsResponse]:
    messages = []
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        messages.append(observer_pb2.GetFlowsResponse.FromString(data[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return messages


def main(path: str, rounds: int, derive_in_store: bool = False) -> dict:
    messages = read_stream(path)
    per_flow = []
    gc.disable()
    for _ in range(rounds):
        decoder = Decoder(derive_in_store=derive_in_store)
        decode = decoder.decode
        started = time.process_time()
        for message in messages:
            decode(message)
        per_flow.append((time.process_time() - started) / len(messages) * 1e6)
        del decoder
        gc.collect()
    return {"flows": len(messages), "rounds": rounds, "best_us_per_flow": round(min(per_flow), 2),
            "median_us_per_flow": round(statistics.median(per_flow), 2)}


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--derive-in-store"]
    print(json.dumps(main(arguments[0], int(arguments[1]) if len(arguments) > 1 else 7,
                          "--derive-in-store" in sys.argv)))
