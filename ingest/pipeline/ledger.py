"""The ledger: what each committed batch received and did with it, per source and node.

One `ingest_ledger` row per (source, node) of a resolved batch (its lookups answered):
flows received, filtered and quarantined (counted by the batcher), stored per table
(the rows left to insert), duplicates (received but already stored) and lost (events
Hubble reported lost, counted once per loss report as stored). `received - duplicates
= stored_audit` always holds. The rows go into the batch itself, inserted last, so a
batch and its books land together.
"""

from __future__ import annotations

from ..store.flow_input import FLOW_INPUT
from ..store.schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, INGEST_LEDGER, L7_AUDIT
from .records import SealedBatch

_STORED_COLUMNS = {HTTP_FLOWS.name: "stored_http", DNS_FLOWS.name: "stored_dns", L7_AUDIT.name: "stored_audit",
                   INGEST_GAPS.name: "stored_gaps"}
_NODE_AT = {table.name: table.column_names.index("node") for table in (HTTP_FLOWS, DNS_FLOWS, L7_AUDIT, INGEST_GAPS)}
_GAP_KIND = INGEST_GAPS.column_names.index("kind")
# An input row stores an audit row, and a typed one by its type.
_INPUT_NODE, _INPUT_TYPE = FLOW_INPUT.column_names.index("node"), FLOW_INPUT.column_names.index("type")
_INPUT_STORES = {"HTTP": ("stored_audit", "stored_http"), "DNS": ("stored_audit", "stored_dns")}
_GAP_COUNT = INGEST_GAPS.column_names.index("count")


def ledger_rows(batch: SealedBatch) -> list[tuple]:
    """One ledger row per (source, node) of a resolved batch."""
    stored: dict[str, dict[str, int]] = {}
    for name, column in _STORED_COLUMNS.items():
        node_at = _NODE_AT[name]
        for row in batch.rows.get(name, ()):
            counts = stored.setdefault(row[node_at], {})
            counts[column] = counts.get(column, 0) + 1
    for row in batch.rows.get(FLOW_INPUT.name, ()):
        counts = stored.setdefault(row[_INPUT_NODE], {})
        for column in _INPUT_STORES.get(row[_INPUT_TYPE], ("stored_audit",)):
            counts[column] = counts.get(column, 0) + 1
    # A loss report that Hubble sends again after a reconnect is one loss: counted as stored.
    for row in batch.rows.get(INGEST_GAPS.name, ()):
        if row[_GAP_KIND] == "lost_events":
            counts = stored[row[_NODE_AT[INGEST_GAPS.name]]]
            counts["lost"] = counts.get("lost", 0) + row[_GAP_COUNT]
    committed_ms = batch.created_ns // 1_000_000
    rows = []
    for (source, node), tally in sorted(batch.tallies.items()):
        counts = stored.get(node, {})
        values = {
            "time": tally.get("oldest_ns") or batch.created_ns, "window_end": tally.get("newest_ns") or batch.created_ns,
            "committed_at": committed_ms, "node": node, "source": source,
            "ledger_id": f"{batch.batch_id}-{source}-{node}",
            "received": tally.get("received", 0), "filtered": tally.get("filtered", 0),
            "stored_http": counts.get("stored_http", 0), "stored_dns": counts.get("stored_dns", 0),
            "stored_audit": counts.get("stored_audit", 0), "stored_gaps": counts.get("stored_gaps", 0),
            "duplicates": tally.get("received", 0) - counts.get("stored_audit", 0),
            "quarantined": tally.get("quarantined", 0), "lost": counts.get("lost", 0),
        }
        rows.append(tuple(values[c] for c in INGEST_LEDGER.column_names))
    return rows
