"""The sink: takes spooled batches to ClickHouse, oldest first, and retries until they land.

For each batch: `resolve` looks up the rows that may be stored already (a replayed file,
the overlap after a reconnect), drops those, and writes the ledger rows; the answer is
kept in the spool (the resolved batch when rows were dropped, else an empty marker file
beside it), so what gets inserted never changes afterwards.
Then each table's rows go in one insert carrying a deterministic
`insert_deduplication_token` (the tables set `non_replicated_deduplication_window`),
so re-inserting a batch after a timeout or a crash stores nothing twice. The ledger
is written last. Only then is the batch removed from the spool.

A store that fails is retried with capped exponential backoff and full jitter, with
one log line when failing starts and one when it recovers. A batch whose rows the
store's client cannot encode (a value of the wrong type, or one its column cannot hold;
the decoder rejects those, so only a defect gets here) would be refused on every retry
and hold up the spool: it is set aside and recorded as an unreadable spool file is, and
the next batch goes on. When a later batch is refused at that table too, before any batch
of flows has inserted rows into it, the fault is not in one batch (the table changed
under the ingester, say): that is treated as a failing store, and the batches wait in
the spool.

The sink does not know whether the store is a server or the embedded engine.
"""

from __future__ import annotations

import hashlib
import logging
import random
import struct
import time

from clickhouse_connect.driver.exceptions import DataError

from . import metrics
from .schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, INGEST_LEDGER, L7_AUDIT, Table
from .spool import RECORD_SOURCE, Spool, SpooledBatch

log = logging.getLogger(__name__)

# Typed tables first, then the audit table, then the ledger that accounts for them.
WRITE_ORDER = (HTTP_FLOWS, DNS_FLOWS, INGEST_GAPS, L7_AUDIT, INGEST_LEDGER)
TABLES = {t.name: t for t in WRITE_ORDER}
_NODE = 1  # every stored table has `node` as its second column
_STORED_COLUMNS = {HTTP_FLOWS.name: "stored_http", DNS_FLOWS.name: "stored_dns", L7_AUDIT.name: "stored_audit",
                   INGEST_GAPS.name: "stored_gaps"}
_GAP_KIND = INGEST_GAPS.column_names.index("kind")
_GAP_COUNT = INGEST_GAPS.column_names.index("count")


class StoreUnavailable(RuntimeError):
    """The store failed; the batch stays in the spool and is tried again later."""


class BatchRefused(RuntimeError):
    """The store's client cannot encode the batch's rows for table: trying again cannot help."""

    def __init__(self, message: str, table: str, stored_tables: tuple[str, ...]):
        super().__init__(message)
        self.table = table
        self.stored_tables = stored_tables


# What encoding a value of the wrong type raises in clickhouse-connect's column writers
# (a string where a number goes, None in an array, a lone surrogate, a malformed UUID).
_ENCODING_ERRORS = (ValueError, TypeError, AttributeError, LookupError, ArithmeticError, struct.error)


def _refused_by_client(err: BaseException) -> bool:
    """Whether an insert failed because the client could not encode the rows, which no
    retry changes: DataError (a value its column cannot hold), wherever it is in the
    chain, or one of the errors encoding raises, as the insert call reports it. Neither
    comes from a connection or from the server."""
    if isinstance(err, _ENCODING_ERRORS):
        return True
    while err is not None:
        if isinstance(err, DataError):
            return True
        err = err.__cause__ or err.__context__
    return False


def insert_token(batch_id: str, table: Table, rows: list[tuple]) -> str:
    id_index = table.column_names.index(table.id_column)
    content = f"{batch_id}|{table.name}|{rows[0][_NODE]}|{rows[0][id_index]}|{rows[-1][id_index]}|{len(rows)}"
    return hashlib.sha256(content.encode()).hexdigest()


class Sink:
    def __init__(self, client, database: str, retry_initial_s: float = 0.2, retry_max_s: float = 30.0):
        self.client = client
        self.database = database
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._delay = retry_initial_s
        self._next_try = 0.0
        self._failing_since: float | None = None
        # Tables whose rows were refused (their batch set aside) and that no batch since has
        # inserted rows into.
        self._refusing: set[str] = set()

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    def drain(self, spool: Spool, on_commit=None, force: bool = False) -> bool:
        """Insert spooled batches, oldest first, until the spool is empty (True) or the
        store fails (False; the next call before the backoff has passed does nothing)."""
        if not force and time.monotonic() < self._next_try:
            return False
        while True:
            oldest = spool.oldest()
            if oldest is None:
                return True
            path, batch = oldest
            try:
                if not batch.resolved:
                    # Lookups may give another answer later (more rows stored by then, some
                    # by this very batch): the first answer is kept, so a re-insert after a
                    # crash sends exactly the same blocks.
                    if spool.nothing_stored(path):
                        batch.check_stored = {}
                    asked, dropped = self._resolve(batch)
                    if dropped:
                        spool.replace(path, batch)
                    elif asked:
                        spool.note_nothing_stored(path)  # cheaper than rewriting the batch
                inserted = self._insert(batch)
            except StoreUnavailable as err:
                self._failed(err)
                return False
            except BatchRefused as err:
                if batch.source == RECORD_SOURCE:
                    self._failed(StoreUnavailable(f"{err} (a record of a batch set aside is never set aside)"))
                    return False
                if err.table in self._refusing:
                    self._failed(StoreUnavailable(f"{err} (the last batch with {err.table} rows was refused too: "
                                                  "it waits in the spool)"))
                    return False
                self._refusing.difference_update(err.stored_tables)
                self._refusing.add(err.table)
                spool.set_aside(path, str(err), err.stored_tables)
                continue
            self._recovered()
            if batch.source != RECORD_SOURCE:  # a record's gap and ledger rows are no proof: see above
                self._refusing.difference_update(inserted)
            spool.remove(path)
            if on_commit is not None:
                on_commit(batch, inserted)

    def _failed(self, err: StoreUnavailable) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("store failing, batches wait in the spool and are retried: %s", err)
        metrics.STORE_UP.set(0)
        metrics.INSERT_RETRIES.inc()
        self._next_try = now + random.uniform(0, self._delay)
        self._delay = min(self._delay * 2, self.retry_max_s)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("store back after %.1f s", time.monotonic() - self._failing_since)
        self._failing_since = None
        self._delay = self.retry_initial_s
        self._next_try = 0.0
        metrics.STORE_UP.set(1)

    def _call(self, table: Table, call):
        try:
            return call()
        except Exception as err:  # any failure of the store is retried later, none is fatal
            metrics.INSERT_ERRORS.labels(table.name, type(err).__name__).inc()
            raise StoreUnavailable(f"{table.name}: {type(err).__name__}: {err}") from err

    def _resolve(self, batch: SpooledBatch) -> tuple[bool, bool]:
        """Drop rows already stored and add the ledger rows. Returns whether the store was
        asked and whether rows were dropped (without either, resolving the spooled batch
        again gives the same rows). Every table is asked before any row is dropped: a
        lookup that fails leaves the batch as it was, for the retry to ask again."""
        asked = False
        found: dict[str, tuple[set[str], int]] = {}
        for name, candidates in batch.check_stored.items():
            table = TABLES[name]
            id_index = table.column_names.index(table.id_column)
            times = [row[0] for row in batch.rows.get(name, []) if row[id_index] in candidates]
            if not times:
                continue
            stored = self._call(table, lambda: self.stored_ids(table, candidates, min(times), max(times)))
            asked = True
            if stored:
                found[name] = (stored, id_index)
        for name, (stored, id_index) in found.items():
            kept = [row for row in batch.rows[name] if row[id_index] not in stored]
            metrics.DUPLICATES_DROPPED.labels(name).inc(len(batch.rows[name]) - len(kept))
            batch.rows[name] = kept
        batch.check_stored = {}
        batch.rows[INGEST_LEDGER.name] = ledger_rows(batch)
        batch.resolved = True
        return asked, bool(found)

    def stored_ids(self, table: Table, ids: set[str], min_ns: int, max_ns: int) -> set[str]:
        source = f"`{self.database}`.`{table.name}`"
        in_range = "time >= fromUnixTimestamp64Nano({lo:Int64}) AND time <= fromUnixTimestamp64Nano({hi:Int64})"
        bounds = {"lo": min_ns, "hi": max_ns}
        # Whether the time range holds any row at all costs a granule's read. The ids'
        # lookup costs formatting every id into the query (4 µs an id, 11% of a replay),
        # and a backfill into days not stored yet would pay it for nothing.
        if not self.client.query(f"SELECT 1 FROM {source} WHERE {in_range} LIMIT 1", parameters=bounds).result_rows:
            return set()
        result = self.client.query(f"SELECT {table.id_column} FROM {source} WHERE {in_range} "
                                   f"AND {table.id_column} IN {{ids:Array(String)}}",
                                   parameters={**bounds, "ids": sorted(ids)}, query_formats={"UUID": "string"})
        found = {row[0] for row in result.result_rows}
        if table.id_type == "UUID":
            # A UUID reads back with dashes; a batch spells a content hash without them.
            found |= {stored.replace("-", "") for stored in found}
        return found

    def _insert(self, batch: SpooledBatch) -> dict[str, list[tuple]]:
        inserted = {}
        for table in WRITE_ORDER:
            rows = batch.rows.get(table.name)
            if not rows:
                continue
            token = insert_token(batch.batch_id, table, rows)

            def insert():
                started = time.perf_counter()
                # clickhouse-connect's insert context keeps the list it is given in a reference
                # cycle; emptied afterwards, the rows are freed as soon as the batch is done
                # with, not when the cycle collector next runs.
                sent = list(rows)
                try:
                    self.client.insert(f"`{self.database}`.`{table.name}`", sent, column_names=table.column_names,
                                       settings={"insert_deduplication_token": token,
                                                 # so the rollups' views also drop a re-inserted block
                                                 "deduplicate_blocks_in_dependent_materialized_views": 1,
                                                 # on a cluster, so the token reaches the shard with the rows
                                                 "distributed_foreground_insert": 1,
                                                 **_partitions_setting(rows)})
                finally:
                    sent.clear()
                metrics.INSERT_DURATION.labels(table.name).observe(time.perf_counter() - started)

            try:
                self._call(table, insert)
            except StoreUnavailable as err:
                cause = err.__cause__
                if _refused_by_client(cause):
                    raise BatchRefused(f"the store's client refused its {table.name} rows: "
                                       f"{type(cause).__name__}: {cause}", table.name, tuple(inserted)) from cause
                raise
            metrics.ROWS_INSERTED.labels(table.name).inc(len(rows))
            metrics.BATCHES_INSERTED.labels(table.name).inc()
            inserted[table.name] = rows
        metrics.LAST_INSERT.set(time.time())
        return inserted


_DAY_NS = 86_400 * 1_000_000_000
# ClickHouse's default max_partitions_per_insert_block; the tables are partitioned by day.
_PARTITIONS_PER_INSERT = 100


def _partitions_setting(rows: list[tuple]) -> dict[str, int]:
    """For a block spanning more days than the server takes in one insert (a backfill of a
    quiet cluster), which it would refuse on every retry: lift the limit, for that block
    only (where a settings profile forbids changing it, such a block fails as before)."""
    if len({row[0] // _DAY_NS for row in rows}) > _PARTITIONS_PER_INSERT:
        return {"max_partitions_per_insert_block": 0}
    return {}


def ledger_rows(batch: SpooledBatch) -> list[tuple]:
    """One ledger row per (source, node) of a resolved batch."""
    stored: dict[str, dict[str, int]] = {}
    for name, column in _STORED_COLUMNS.items():
        for row in batch.rows.get(name, ()):
            counts = stored.setdefault(row[_NODE], {})
            counts[column] = counts.get(column, 0) + 1
    # A loss report that Hubble sends again after a reconnect is one loss: counted as stored.
    for row in batch.rows.get(INGEST_GAPS.name, ()):
        if row[_GAP_KIND] == "lost_events":
            counts = stored[row[_NODE]]
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
