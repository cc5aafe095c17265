"""The store as the history server reads it: flows by time window, recorded gaps, nodes,
namespaces and counts. Every query runs under the configured budget; ClickHouse stops one
that passes it, and that becomes OverBudget naming the config key."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..config import ServeConfig
from ..metrics.history import STORE_QUERIES
from ..store.schema import DNS_ROLLUP, HTTP_ROLLUP, INGEST_LEDGER, L7_AUDIT
from . import query

# ClickHouse's error codes for a query stopped by a limit, and the key that sets each.
_LIMITS = {
    "TOO_MANY_ROWS": "serve.query_max_rows_read", "TOO_MANY_BYTES": "serve.query_max_rows_read",
    "TIMEOUT_EXCEEDED": "serve.query_timeout_s", "MEMORY_LIMIT_EXCEEDED": "serve.query_memory_mb",
}


class OverBudget(RuntimeError):
    """A query passed a budget; the message names the config key."""


class StoreFailed(RuntimeError):
    """The store could not answer."""


@dataclass(frozen=True)
class StoredFlow:
    time_ns: int
    node: str
    flow_id: str
    flow: bytes

    @property
    def key(self) -> tuple[int, str, str]:
        return self.time_ns, self.node, self.flow_id


@dataclass(frozen=True)
class Gap:
    time_ns: int
    node: str
    gap_id: str
    kind: str
    source: str
    count: int
    first_ns: int
    last_ns: int
    message: str


class HistoryReader:
    def __init__(self, connect, database: str, serve: ServeConfig, masker=str):
        """connect() opens a client; each serving thread gets its own, as one
        clickhouse-connect session answers one query at a time."""
        self.connect = connect
        self.database = database
        self.settings = {"max_execution_time": serve.query_timeout_s,
                         "max_memory_usage": serve.query_memory_mb << 20,
                         "max_rows_to_read": serve.query_max_rows_read}
        self.mask = masker
        self._local = threading.local()
        self._cached: dict[str, tuple[float, object]] = {}

    def _query(self, sql: str, parameters: dict, column_formats: dict | None = None) -> list[tuple]:
        started = time.monotonic()
        try:
            client = getattr(self._local, "client", None)
            if client is None:
                client = self._local.client = self.connect()
            rows = client.query(sql, parameters=parameters, settings=self.settings,
                                column_formats=column_formats).result_rows
        except Exception as err:  # clickhouse-connect and chdb raise many kinds
            text = self.mask(str(err))
            for code, key in _LIMITS.items():
                if code in text:
                    STORE_QUERIES.labels("over_budget").observe(time.monotonic() - started)
                    first = text.strip().splitlines()[0][:300]
                    raise OverBudget(f"the query is over its budget ({key}): {first}") from None
            STORE_QUERIES.labels("failed").observe(time.monotonic() - started)
            raise StoreFailed(f"store: {text.strip().splitlines()[0][:300] if text.strip() else type(err).__name__}") \
                from None
        STORE_QUERIES.labels("ok").observe(time.monotonic() - started)
        return rows

    def flows(self, lo_ns: int, hi_ns: int, push: query.Pushdown, descending: bool, limit: int) -> list[StoredFlow]:
        rows = self._query(query.flows_sql(self.database, push.condition, descending),
                           {**push.parameters, "lo": lo_ns, "hi": hi_ns, "limit": limit}, {"flow": "bytes"})
        return [StoredFlow(*row) for row in rows]

    def keys(self, lo_ns: int, hi_ns: int, push: query.Pushdown) -> list[tuple[int, str, str]]:
        if hi_ns <= lo_ns:
            return []
        return [tuple(row) for row in self._query(query.keys_sql(self.database, push.condition),
                                                  {**push.parameters, "lo": lo_ns, "hi": hi_ns})]

    def gaps(self, lo_ns: int, hi_ns: int, limit: int = 10_000) -> list[Gap]:
        return [Gap(*row) for row in self._query(query.gaps_sql(self.database),
                                                 {"lo": lo_ns, "hi": hi_ns, "limit": limit})]

    def span(self) -> tuple[int, int, int]:
        """(oldest flow's time, newest flow's time, flows) in ns; (0, 0, 0) when empty."""
        oldest, newest, count = self._query(query.time_span_sql(self.database), {})[0]
        return (oldest, newest, count) if count else (0, 0, 0)

    def _cache(self, name: str, seconds: float, compute):
        """Hubble UI asks for nodes and status every 3 s, per browser tab."""
        now = time.monotonic()
        hit = self._cached.get(name)
        if hit and now - hit[0] < seconds:
            return hit[1]
        value = compute()
        self._cached[name] = (now, value)
        return value

    def nodes(self) -> list[tuple[str, int, int]]:
        """(node, flows stored, newest flow's time in ns) for every node in the store."""
        sql = (f"SELECT node, count(), toUnixTimestamp64Nano(max(time)) FROM `{self.database}`.`{L7_AUDIT.name}` "
               f"GROUP BY node ORDER BY node")
        return self._cache("nodes", 2.0, lambda: self._query(sql, {}))

    def namespaces(self) -> list[str]:
        """Every namespace with a stored HTTP or DNS flow (from the rollups: small)."""
        sides = [(HTTP_ROLLUP, "source_namespace"), (HTTP_ROLLUP, "destination_namespace"),
                 (DNS_ROLLUP, "source_namespace")]
        union = " UNION ALL ".join(f"SELECT DISTINCT {column} AS ns FROM `{self.database}`.`{table.name}`"
                                   for table, column in sides)
        sql = f"SELECT DISTINCT ns FROM ({union}) WHERE ns != '' ORDER BY ns"
        return self._cache("namespaces", 2.0, lambda: [row[0] for row in self._query(sql, {})])

    def seen_and_recent(self, recent_s: float) -> tuple[int, int]:
        """(flows the ingesters received, flows stored in the last recent_s seconds)."""
        def compute():
            seen = self._query(f"SELECT sum(received) + sum(filtered) FROM `{self.database}`.`{INGEST_LEDGER.name}`",
                               {})[0][0]
            recent = self._query(
                f"SELECT count() FROM `{self.database}`.`{L7_AUDIT.name}` "
                f"WHERE time >= now64(9) - toIntervalMillisecond({{ms:UInt64}})", {"ms": int(recent_s * 1000)})[0][0]
            return int(seen or 0), int(recent)
        return self._cache("seen", 2.0, compute)
