"""The raw receive limit: how fast a Python gRPC client with the ingester's channel options
can take the stream, doing nothing with it.

    python -m bench.limit ADDRESS EXPECTED

Calls `/observer.Observer/GetFlows` with the ingester's own request and channel options
(`ingest.sources.hubble.CHANNEL_OPTIONS`), with no response deserializer, so each message
arrives as bytes and is dropped. Prints one JSON line: messages, bytes, seconds from the
call to the last message, messages/s, and the process's CPU seconds. Run as its own
process so that nothing else shares its interpreter.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import grpc

from ingest.config import SourceConfig
from ingest.sources.hubble import CHANNEL_OPTIONS, flows_request

PATH = "/observer.Observer/GetFlows"


def receive(address: str, expected: int) -> dict:
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=10)
    get_flows = channel.unary_stream(PATH, request_serializer=lambda request: request.SerializeToString(),
                                     response_deserializer=None)
    request = flows_request(SourceConfig(address=address), 0)
    cpu_before = time.process_time()
    messages = size = 0
    first = None
    started = time.perf_counter()
    call = get_flows(request)
    for message in call:
        if first is None:
            first = time.perf_counter()
        messages += 1
        size += len(message)
        if messages == expected:
            break
    ended = time.perf_counter()
    call.cancel()
    channel.close()
    seconds = ended - started
    return {"messages": messages, "bytes": size, "seconds": round(seconds, 4),
            "first_message_after_s": round((first or ended) - started, 4),
            "messages_per_s": round(messages / seconds, 1) if seconds else 0.0,
            "mb_per_s": round(size / seconds / 1e6, 1) if seconds else 0.0,
            "cpu_s": round(time.process_time() - cpu_before, 3),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    print(json.dumps(receive(sys.argv[1], int(sys.argv[2]))), flush=True)
