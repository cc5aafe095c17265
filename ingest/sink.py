"""The sink: inserts a batch into ClickHouse, retrying until it is acknowledged.

Each table's rows go in one column-named insert carrying a deterministic
`insert_deduplication_token`, so a retried insert whose first attempt did in fact
land is stored once (the tables set `non_replicated_deduplication_window`). Rows that
may have been stored before (a replayed file, the overlap after a reconnect) are
first checked against the table by id. The audit table is written last.

The sink does not know whether the store is a server or the embedded engine.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time

from . import metrics
from .schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, L7_AUDIT, Table

log = logging.getLogger(__name__)

# Typed tables first and the audit table last: a flow in l7_audit is fully stored.
WRITE_ORDER = (HTTP_FLOWS, DNS_FLOWS, INGEST_GAPS, L7_AUDIT)


class Sink:
    def __init__(self, client, database: str, stop: threading.Event | None = None,
                 retry_initial_s: float = 0.2, retry_max_s: float = 30.0):
        self.client = client
        self.database = database
        self.stop = stop or threading.Event()
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        # False from a failed store operation until the next one succeeds.
        self.healthy = True

    def write(self, rows_by_table: dict[Table, list[tuple]],
              check_stored: dict[Table, set[str]]) -> dict[str, list[tuple]]:
        """Insert every table's rows; rows whose id is in check_stored[table] are first
        looked up and skipped if already stored. Returns the rows inserted, per table name."""
        inserted = {}
        for table in WRITE_ORDER:
            rows = rows_by_table.get(table)
            if not rows:
                continue
            candidates = check_stored.get(table)
            if candidates:
                rows = self._drop_stored(table, rows, candidates)
                if not rows:
                    continue
            self._insert(table, rows)
            inserted[table.name] = rows
        return inserted

    def _drop_stored(self, table: Table, rows: list[tuple], candidates: set[str]) -> list[tuple]:
        id_index = table.column_names.index(table.id_column)
        times = [row[0] for row in rows if row[id_index] in candidates]
        stored = self._retrying(table, "lookup", lambda: self.stored_ids(table, candidates, min(times), max(times)))
        if not stored:
            return rows
        metrics.DUPLICATES_DROPPED.labels(table.name).inc(len(stored))
        return [row for row in rows if row[id_index] not in stored]

    def stored_ids(self, table: Table, ids: set[str], min_ns: int, max_ns: int) -> set[str]:
        result = self.client.query(
            f"SELECT {table.id_column} FROM `{self.database}`.`{table.name}` "
            "WHERE time >= fromUnixTimestamp64Nano({lo:Int64}) AND time <= fromUnixTimestamp64Nano({hi:Int64}) "
            f"AND {table.id_column} IN {{ids:Array(String)}}",
            parameters={"lo": min_ns, "hi": max_ns, "ids": sorted(ids)})
        return {row[0] for row in result.result_rows}

    def _insert(self, table: Table, rows: list[tuple]) -> None:
        id_index = table.column_names.index(table.id_column)
        token = hashlib.sha256(
            f"{table.name}|{rows[0][1]}|{rows[0][id_index]}|{rows[-1][id_index]}|{len(rows)}".encode()).hexdigest()

        def insert():
            started = time.perf_counter()
            self.client.insert(f"`{self.database}`.`{table.name}`", rows, column_names=table.column_names,
                               settings={"insert_deduplication_token": token,
                                         # so the rollups' views also drop a retried block
                                         "deduplicate_blocks_in_dependent_materialized_views": 1})
            metrics.INSERT_DURATION.labels(table.name).observe(time.perf_counter() - started)

        self._retrying(table, "insert", insert)
        metrics.ROWS_INSERTED.labels(table.name).inc(len(rows))
        metrics.BATCHES_INSERTED.labels(table.name).inc()
        metrics.LAST_INSERT.set(time.time())

    def _retrying(self, table: Table, what: str, call):
        """Run call until it succeeds, with capped exponential backoff and full jitter.
        Logs once when failing starts and once when it recovers, not per attempt."""
        delay = self.retry_initial_s
        failing_since = None
        while True:
            try:
                result = call()
            except Exception as err:  # any failure of the store is retried, none is fatal
                metrics.INSERT_ERRORS.labels(table.name, type(err).__name__).inc()
                metrics.STORE_UP.set(0)
                self.healthy = False
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("%s into %s failed, retrying until it succeeds: %s", what, table.name, err)
                if self.stop.is_set() and time.monotonic() - failing_since > self.retry_max_s:
                    raise
                metrics.INSERT_RETRIES.inc()
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self.retry_max_s)
                continue
            metrics.STORE_UP.set(1)
            self.healthy = True
            if failing_since is not None:
                log.warning("%s into %s succeeded again after %.1f s", what, table.name,
                            time.monotonic() - failing_since)
            return result
