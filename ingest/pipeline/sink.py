"""The sink: stores a sealed batch in ClickHouse, and knows when to try again.

`look_up` asks the store which of a batch's rows that may be stored already (a replayed
file, the overlap after a reconnect) are, and drops them. `insert` puts each table's
rows in one insert carrying a deterministic `insert_deduplication_token` (the tables set
`non_replicated_deduplication_window`), and a batch tried before first asks which of
its rows are there (`insert(retry=True)`), so re-inserting it after a timeout or a crash
stores nothing twice; the ledger's rows go last. A store that fails raises
`StoreUnavailable`; the sink then waits (`ready`) with capped exponential backoff and
full jitter, with one log line when failing starts and one when it recovers. Rows the
store's client cannot encode (a value of the wrong type, or one its column cannot hold;
the decoder rejects those, so only a defect gets here) raise `BatchRefused`: trying
again cannot help, and the batch is set aside. But when the last batch that got as far
as that table was refused there too, before any batch of flows inserted rows into it,
the fault is not in a batch (the table changed under the ingester, say): that is a
failing store, `StoreUnavailable`, and the batches wait.

The sink does not know whether the store is a server or the embedded engine, nor where
batches wait; the wiring (`runner.Writer`) takes them from the spool to here.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time

from clickhouse_connect.driver.exceptions import DataError

from .. import metrics
from ..backoff import Backoff
from ..store import flow_input
from ..store.flow_input import FLOW_INPUT
from ..store.schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, INGEST_LEDGER, L7_AUDIT, Table
from .records import RECORD_SOURCE, SealedBatch

log = logging.getLogger(__name__)

# Typed tables first, then the audit table, then the ledger that accounts for them. The
# input table's views fill the audit and typed tables of a flow in one insert.
WRITE_ORDER = (HTTP_FLOWS, DNS_FLOWS, FLOW_INPUT, INGEST_GAPS, L7_AUDIT, INGEST_LEDGER)
TABLES = {t.name: t for t in WRITE_ORDER}
# Where a table's rows are looked up: an input row is stored once its audit row is (its
# views write every table in the same insert, and a failed one is retried whole).
_STORED_IN = {FLOW_INPUT: L7_AUDIT}


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
    """The same for the same rows of the same batch. It names the first row's second value
    (the node in the flow and gap tables, window_end in the ledger): any value the rows fix
    would do, and this one keeps the tokens that batches spooled by earlier builds were
    inserted with."""
    id_index = table.column_names.index(table.id_column)
    content = f"{batch_id}|{table.name}|{rows[0][1]}|{rows[0][id_index]}|{rows[-1][id_index]}|{len(rows)}"
    return hashlib.sha256(content.encode()).hexdigest()


class Sink:
    def __init__(self, client, database: str, retry_initial_s: float = 0.2, retry_max_s: float = 30.0,
                 schema_current: bool = False, schema_file: str = ""):
        """schema_current: the store's schema is this build's version, so inserts send the
        columns' types from schema.py. Otherwise clickhouse-connect asks the server for them
        (a DESCRIBE TABLE before every insert: half of an insert's fixed cost, 16.6 against
        8.9 ms of CPU for a batch of 10 flows over HTTP), and rows still reach a table an
        older or newer build laid out. A failed insert turns the types off for good: the
        schema may have been migrated since the start (a newer pod in a rolling upgrade),
        and the retry then goes by the server's types.

        schema_file: where the input table's protobuf schema is written, for the embedded
        engine (which reads it from there); empty for a server, to which the schema goes
        with each insert."""
        self.client = client
        self._input_schema = _input_schema_settings(schema_file)
        self.database = database
        self.schema_current = schema_current
        self._backoff = Backoff(retry_initial_s, retry_max_s)
        self._next_try = 0.0
        self._failing_since: float | None = None
        # Tables whose rows were refused (their batch set aside) and that no batch since has
        # inserted rows into.
        self._refusing: set[str] = set()
        # The store answered before a sink is made (the schema's version): up until an insert
        # fails, not down until one succeeds (a quiet node would page as a store outage).
        metrics.STORE_UP.set(1)

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    def ready(self) -> bool:
        """The backoff after the last failure has passed."""
        return time.monotonic() >= self._next_try

    def failed(self, err: StoreUnavailable) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("store failing, batches wait in the spool and are retried: %s", err)
        metrics.STORE_UP.set(0)
        metrics.INSERT_RETRIES.inc()
        self._next_try = now + self._backoff.next_wait()

    def recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("store back after %.1f s", time.monotonic() - self._failing_since)
        self._failing_since = None
        self._backoff.reset()
        self._next_try = 0.0
        metrics.STORE_UP.set(1)

    def probe(self) -> None:
        """Raises StoreUnavailable unless the store answers a query: asked while it fails,
        before a batch is read back from the spool for nothing."""
        try:
            self.client.query("SELECT 1")
        except Exception as err:  # as in _call: any failure is retried later
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err

    def _call(self, table: Table, call):
        try:
            return call()
        except Exception as err:  # any failure of the store is retried later, none is fatal
            metrics.INSERT_ERRORS.labels(table.name, type(err).__name__).inc()
            raise StoreUnavailable(f"{table.name}: {type(err).__name__}: {err}") from err

    def look_up(self, batch: SealedBatch) -> tuple[bool, bool]:
        """Drop the rows of the batch that are stored already. Returns whether the store was
        asked and whether rows were dropped (without either, looking up the batch as it was
        spooled again gives the same rows). Every table is asked before any row is dropped:
        a lookup that fails leaves the batch as it was, for the retry to ask again."""
        asked = False
        found: dict[str, tuple[set[str], int]] = {}
        for name, candidates in batch.check_stored.items():
            table = TABLES[name]
            id_index, time_index = table.column_names.index(table.id_column), table.column_names.index("time")
            times = [row[time_index] for row in batch.rows.get(name, []) if row[id_index] in candidates]
            if not times:
                continue
            stored_in = _STORED_IN.get(table, table)
            stored = self._call(table, lambda: self.stored_ids(stored_in, candidates, min(times), max(times)))
            asked = True
            if stored:
                found[name] = (stored, id_index)
        for name, (stored, id_index) in found.items():
            kept = [row for row in batch.rows[name] if row[id_index] not in stored]
            metrics.DUPLICATES_DROPPED.labels(name).inc(len(batch.rows[name]) - len(kept))
            batch.rows[name] = kept
            if name == FLOW_INPUT.name:
                batch.input_body = None  # the body held the rows dropped
        batch.check_stored = {}
        return asked, bool(found)

    def _not_stored(self, table: Table, rows: list[tuple]) -> list[tuple]:
        """The rows table does not hold yet, by id."""
        id_index, time_index = table.column_names.index(table.id_column), table.column_names.index("time")
        times = [row[time_index] for row in rows]
        stored = self._call(table, lambda: self.stored_ids(table, {row[id_index] for row in rows}, min(times),
                                                           max(times)))
        return [row for row in rows if row[id_index] not in stored] if stored else rows

    def _input_not_stored(self, rows: list[tuple]) -> list[tuple]:
        """The input rows whose flows are not in l7_audit and their typed table both. A flow
        in one of them only (a view that failed after another stored) is sent again whole."""
        audit_at, time_at = FLOW_INPUT.column_names.index("audit_id"), FLOW_INPUT.column_names.index("time")
        id_at, type_at = FLOW_INPUT.column_names.index("flow_id"), FLOW_INPUT.column_names.index("type")
        lo, hi = min(row[time_at] for row in rows), max(row[time_at] for row in rows)
        audited = self._call(L7_AUDIT, lambda: self.stored_ids(L7_AUDIT, {row[audit_at] for row in rows}, lo, hi))
        if not audited:
            return rows
        typed_stored = {}
        for kind, typed in (("HTTP", HTTP_FLOWS), ("DNS", DNS_FLOWS)):
            ids = {row[id_at] for row in rows if row[type_at] == kind and row[audit_at] in audited}
            if ids:
                typed_stored[kind] = self._call(typed, lambda: self.stored_ids(typed, ids, lo, hi))
        return [row for row in rows if row[audit_at] not in audited
                or (row[type_at] in ("HTTP", "DNS") and row[id_at] not in typed_stored.get(row[type_at], ()))]

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

    def insert(self, batch: SealedBatch, retry: bool = False) -> dict[str, list[tuple]]:
        """Every table's rows, in WRITE_ORDER; the batch's rows of each table, now stored.

        retry: an earlier attempt may have stored some of them. Its token makes ClickHouse
        drop a block it has, but only among the table's last inserted blocks
        (non_replicated_deduplication_window): with many nodes writing to one server, a
        retry half a minute later can be past it. So each table is asked first, and only
        the rows it lacks are sent (under the token of what is sent). An input row is left
        out when l7_audit holds it and so does its typed table (views store in each)."""
        inserted = {}
        for table in WRITE_ORDER:
            batch_rows = rows = batch.rows.get(table.name)
            if not rows:
                continue
            if retry:
                rows = self._input_not_stored(rows) if table is FLOW_INPUT else self._not_stored(table, rows)
                if not rows:
                    inserted[table.name] = batch_rows
                    continue
            token = insert_token(batch.batch_id, table, rows)

            def insert():
                started = time.perf_counter()
                # clickhouse-connect's insert context keeps the list it is given in a reference
                # cycle; emptied afterwards, the rows are freed as soon as the batch is done
                # with, not when the cycle collector next runs.
                sent = list(rows)
                settings = {"insert_deduplication_token": token,
                            # so the views also drop a re-inserted block
                            "deduplicate_blocks_in_dependent_materialized_views": 1,
                            # on a cluster, so the token reaches the shard with the rows
                            "distributed_foreground_insert": 1,
                            **_partitions_setting(rows, table.column_names.index("time"))}
                try:
                    if table is FLOW_INPUT:
                        # The body the spool file keeps, unless only some of the rows go. Bytes,
                        # never a generator: a request sent again must carry all of it.
                        body = batch.input_body if rows is batch_rows and batch.input_body is not None \
                            else flow_input.compressed_body(sent)
                        self.client.raw_insert(f"`{self.database}`.`{table.name}`", insert_block=body, fmt="Protobuf",
                                               compression="lz4", settings={**settings, **self._input_schema})
                        return
                    self.client.insert(f"`{self.database}`.`{table.name}`", sent, column_names=table.column_names,
                                       column_type_names=table.column_types if self.schema_current else None,
                                       settings=settings)
                finally:
                    sent.clear()
                    metrics.INSERT_DURATION.labels(table.name).observe(time.perf_counter() - started)

            try:
                self._call(table, insert)
            except StoreUnavailable as err:
                self.schema_current = False
                cause = err.__cause__
                if _refused_by_client(cause):
                    raise self._refusal(BatchRefused(f"the store's client refused its {table.name} rows: "
                                                     f"{type(cause).__name__}: {cause}", table.name,
                                                     tuple(inserted)), batch) from cause
                raise
            # By the tables that hold the rows: the input table's views store in three.
            stored = flow_input.derived_counts(rows) if table is FLOW_INPUT else {table.name: len(rows)}
            for name, count in stored.items():
                metrics.ROWS_INSERTED.labels(name).inc(count)
            metrics.BATCHES_INSERTED.labels(table.name).inc()
            inserted[table.name] = batch_rows
        metrics.LAST_INSERT.set(time.time())
        if batch.source != RECORD_SOURCE:  # a record's gap and ledger rows are no proof: see _refusal
            self._refusing.difference_update(inserted)
        return inserted

    def _refusal(self, refused: BatchRefused, batch: SealedBatch) -> BatchRefused | StoreUnavailable:
        """What a refusal means: this batch cannot be stored (BatchRefused: set it aside), or,
        when the batch before that got as far as the same table was refused there too, before
        any batch of flows inserted rows into it, the fault is not in a batch (a column's type
        changed under the ingester, say): a failing store, and the batches wait. A record of a
        batch set aside is never set aside itself."""
        if batch.source == RECORD_SOURCE:
            return StoreUnavailable(f"{refused} (a record of a batch set aside is never set aside)")
        if refused.table in self._refusing:
            return StoreUnavailable(f"{refused} (the last batch with {refused.table} rows was refused too: "
                                    "it waits in the spool)")
        self._refusing.difference_update(refused.stored_tables)
        self._refusing.add(refused.table)
        return refused


def _input_schema_settings(schema_file: str) -> dict[str, str]:
    """The settings that give FORMAT Protobuf the input table's schema: the text itself
    (ClickHouse 25.6 and later keep it in their own cache), or, for the embedded engine,
    a file of it (given as text, chdb writes its cache under the process's working
    directory)."""
    if not schema_file:
        return {"format_schema_source": "string", "format_schema": flow_input.protobuf_schema(),
                "format_schema_message_name": flow_input.MESSAGE}
    return {"format_schema": f"{schema_file}:{flow_input.MESSAGE}"}


_DAY_NS = 86_400 * 1_000_000_000
# ClickHouse's default max_partitions_per_insert_block; the tables are partitioned by day.
_PARTITIONS_PER_INSERT = 100


def _partitions_setting(rows: list[tuple], time_index: int) -> dict[str, int]:
    """For a block spanning more days than the server takes in one insert (a backfill of a
    quiet cluster), which it would refuse on every retry: lift the limit, for that block
    only (where a settings profile forbids changing it, such a block fails as before)."""
    if len({row[time_index] // _DAY_NS for row in rows}) > _PARTITIONS_PER_INSERT:
        return {"max_partitions_per_insert_block": 0}
    return {}
