"""What the ingester tells Prometheus: its own metrics (`ingester`), the Hubble-style L7
metrics derived from the stored flows (`l7`), and the HTTP endpoint that serves them with
the health checks (`endpoint`). The own metrics are re-exported here: every stage
updates them as `metrics.NAME`."""

from .ingester import (BUILD_INFO, FLOWS_RECEIVED, FLOWS_FILTERED, DECODE_ERRORS, DEAD_LETTERS, DUPLICATES_DROPPED,
                       ROWS_INSERTED, BATCHES_INSERTED, INSERT_DURATION, INSERT_ERRORS, INSERT_RETRIES, LOST_EVENTS,
                       NODE_STATUS, RECONNECTS, CONNECTED, QUEUE_DEPTH, LAST_INSERT, NEWEST_COMMITTED, CHECKPOINT_WRITTEN,
                       INGEST_LAG, CHECKPOINT_AGE, SPOOL_BYTES, SPOOL_UNREADABLE, SPOOL_BATCHES, STORE_UP, record_commit,
                       record_checkpoint)

__all__ = ["BUILD_INFO", "FLOWS_RECEIVED", "FLOWS_FILTERED", "DECODE_ERRORS", "DEAD_LETTERS", "DUPLICATES_DROPPED",
           "ROWS_INSERTED", "BATCHES_INSERTED", "INSERT_DURATION", "INSERT_ERRORS", "INSERT_RETRIES", "LOST_EVENTS",
           "NODE_STATUS", "RECONNECTS", "CONNECTED", "QUEUE_DEPTH", "LAST_INSERT", "NEWEST_COMMITTED",
           "CHECKPOINT_WRITTEN", "INGEST_LAG", "CHECKPOINT_AGE", "SPOOL_BYTES", "SPOOL_UNREADABLE", "SPOOL_BATCHES",
           "STORE_UP", "record_commit", "record_checkpoint"]
