"""`flowlog run` with a fault-injecting store client, as a process the fault tests kill.

    python -m tests.fault_worker ADDRESS STATE_DIR SEED RUN MAY_CRASH DERIVE

DERIVE is store.derive (ingester or store). On SIGTERM it stops like `flowlog run` and prints, as one JSON line, what the store
holds, for the test to check.
"""

from __future__ import annotations

import json
import random
import signal
import sys

from ingest import logs
from ingest.config import load
from ingest.runner import Ingester
from ingest.store.connection import open_store

from .faults import FaultyClient, plan


def stored(client, database: str) -> dict:
    def rows(sql):
        return client.query(sql.replace("DB", f"`{database}`")).result_rows

    ledger = rows("SELECT sum(received), sum(stored_http), sum(stored_dns), sum(stored_audit), sum(stored_gaps), "
                  "sum(duplicates), sum(lost) FROM DB.ingest_ledger")[0]
    return {
        "audit_ids": [r[0] for r in rows("SELECT flow_id FROM DB.l7_audit")],
        "http_ids": [r[0] for r in rows("SELECT toString(flow_id) FROM DB.http_flows")],
        "dns_ids": [r[0] for r in rows("SELECT toString(flow_id) FROM DB.dns_flows")],
        "gaps": [list(r) for r in rows("SELECT gap_id, kind, count FROM DB.ingest_gaps WHERE kind = 'lost_events'")],
        "ledger": dict(zip(["received", "stored_http", "stored_dns", "stored_audit", "stored_gaps", "duplicates",
                            "lost"], [int(v or 0) for v in ledger])),
    }


def main(address: str, state_dir: str, seed: int, run: int, may_crash: bool, derive: str) -> int:
    rng = random.Random(f"{seed}:{run}:batch")
    config = load(env={}, overrides={
        "source.address": address, "state_dir": state_dir, "metrics.address": "",
        "batch.max_rows": str(rng.choice([20, 50, 120])), "batch.max_delay_ms": "40",
        "store.retry_initial_s": "0.02", "store.retry_max_s": "0.2", "shutdown_timeout_s": "10",
        "source.reconnect_initial_s": "0.05", "source.reconnect_max_s": "0.2",
        "store.derive": derive, "metrics.l7": str(derive == "ingester").lower()})
    logs.configure("plain", "warning")
    client = open_store(config)
    ingester = Ingester(config, client)
    ingester.sink.client = FaultyClient(client, plan(seed, run, may_crash))
    signal.signal(signal.SIGTERM, lambda *_: ingester.request_stop())
    ingester.run()
    print(json.dumps(stored(client, config.store.database)), flush=True)
    return 0


if __name__ == "__main__":
    address, state_dir, seed, run, may_crash, derive = sys.argv[1:7]
    sys.exit(main(address, state_dir, int(seed), int(run), may_crash == "1", derive))
