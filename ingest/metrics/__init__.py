"""What the ingester tells Prometheus. This module defines its own metrics, one definition
each, in the default registry; every stage updates them as `metrics.NAME`, and it
imports nothing of ours. Beside it: `l7`, the Hubble-style L7 metrics derived from the
stored flows; `history`, the history server's, in a registry of their own; and
`endpoint`, which serves them with the health checks.
Names follow Prometheus conventions: `flowlog_` prefix, units in the name, `_total`
on counters.
"""

import time

from prometheus_client import Counter, Gauge, Histogram, Info

BUILD_INFO = Info("flowlog_build", "Version of the running hubble-flowlog")

FLOWS_RECEIVED = Counter("flowlog_flows_received_total",
                         "Flows received, by source kind and Hubble flow type", ["source", "type"])
FLOWS_FILTERED = Counter("flowlog_flows_filtered_total",
                         "Flows received but not stored because they are not L7, by flow type", ["type"])
EXPORTER_EVENTS = Counter("flowlog_exporter_events_total",
                          "Agent and debug events read from Hubble exporter files (counted, not stored), by kind",
                          ["kind"])
FILE_GAPS = Counter("flowlog_file_gaps_total",
                    "Exporter files found cut (file_truncated) or rotated away before they were read to their end "
                    "(file_rotated_away): each recorded in ingest_gaps", ["kind"])
JSON_UNKNOWN_FIELDS = Counter("flowlog_json_unknown_fields_total",
                              "Fields of replayed JSON this build does not know (skipped; the flow is stored), by "
                              "path (at most 100 paths, the rest as other)", ["field"])
DECODE_ERRORS = Counter("flowlog_decode_errors_total",
                        "Input that could not be decoded, by source kind", ["source"])
DEAD_LETTERS = Counter("flowlog_dead_letters_total",
                       "Bad input dead-lettered (kept in the dead-letter file unless writing it failed)")
DUPLICATES_DROPPED = Counter("flowlog_duplicates_dropped_total",
                             "Rows not inserted because the same id was already stored or batched", ["table"])
ROWS_INSERTED = Counter("flowlog_rows_inserted_total", "Rows inserted, by table", ["table"])
BATCHES_INSERTED = Counter("flowlog_batches_inserted_total", "Insert statements acknowledged, by table", ["table"])
INSERT_DURATION = Histogram("flowlog_insert_duration_seconds", "Time to insert one batch into one table",
                            ["table"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
INSERT_ERRORS = Counter("flowlog_insert_errors_total", "Failed insert attempts, by table and error kind",
                        ["table", "kind"])
INSERT_RETRIES = Counter("flowlog_insert_retries_total", "Insert attempts repeated after a failure")
LOST_EVENTS = Counter("flowlog_lost_events_total", "Events Hubble reported lost, by where they were lost",
                      ["source"])
NODE_STATUS = Counter("flowlog_node_status_events_total", "Node status changes reported by Hubble Relay, by state",
                      ["state"])
RECONNECTS = Counter("flowlog_reconnects_total", "Times the Hubble stream was opened again after it broke")
CONNECTED = Gauge("flowlog_hubble_connected", "1 while a Hubble stream is open, or an exporter file is being read")
QUEUE_DEPTH = Gauge("flowlog_queue_depth", "Decoded items waiting to be batched")
QUEUE_BYTES = Gauge("flowlog_queue_bytes", "Protobuf bytes of the decoded flows waiting to be batched "
                    "(batch.queue_mb pauses reading)")
LAST_INSERT = Gauge("flowlog_last_insert_timestamp_seconds", "Wall-clock time of the last acknowledged insert")
NEWEST_COMMITTED = Gauge("flowlog_newest_committed_flow_timestamp_seconds", "Time of the newest flow durably stored")
CHECKPOINT_UNREADABLE = Counter("flowlog_checkpoint_unreadable_total",
                                "Checkpoint files that could not be read at start (every flow is then looked up)")
CHECKPOINT_WRITTEN = Gauge("flowlog_checkpoint_timestamp_seconds", "Wall-clock time the checkpoint was last written")
INGEST_LAG = Gauge("flowlog_ingest_lag_seconds", "Now minus the time of the newest flow durably stored "
                   "(0 before the first commit)")
CHECKPOINT_AGE = Gauge("flowlog_checkpoint_age_seconds", "Seconds since the checkpoint was last written "
                       "(0 before the first write)")
SPOOL_BYTES = Gauge("flowlog_spool_bytes", "Bytes of batches waiting on disk for the store")
SPOOL_UNREADABLE = Counter("flowlog_spool_unreadable_files_total",
                           "Spool files that could not be read, moved to the spool's unreadable/ directory")
SPOOL_BATCHES = Gauge("flowlog_spool_batches", "Batches waiting on disk for the store")
STORE_UP = Gauge("flowlog_store_up", "1 while the last store operation succeeded")
STATE_DIR_WRITABLE = Gauge("flowlog_state_dir_writable", "1 while the state dir's file (spool or dead_letters) "
                           "can be written; 0 on a full disk, when reading pauses", ["file"])

_last = {"committed": 0.0, "checkpoint": 0.0}
INGEST_LAG.set_function(lambda: time.time() - _last["committed"] if _last["committed"] else 0.0)
CHECKPOINT_AGE.set_function(lambda: time.time() - _last["checkpoint"] if _last["checkpoint"] else 0.0)


def record_commit(newest_flow_s: float) -> None:
    _last["committed"] = max(_last["committed"], newest_flow_s)
    NEWEST_COMMITTED.set(_last["committed"])


def record_checkpoint() -> None:
    _last["checkpoint"] = time.time()
    CHECKPOINT_WRITTEN.set(_last["checkpoint"])
