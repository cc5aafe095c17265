"""What passes between the stages of the data path, and nothing else.

A source reads messages within a `Window`; the decoder turns each into `FlowRows` (an
L7 flow's typed and audit rows), a `GapRow` (a loss on record), `Filtered` (a flow that
is not L7), `OtherEvent` (an exporter's agent or debug event) or raises `DecodeError`; the dispatcher puts an `Entry` for each in the
batcher's inbox (a `Tally` for what is counted but not stored), and `END` when the
source has no more; the batcher seals a `SealedBatch`, which the spool keeps and the
sink stores. Rows are tuples in their table's column order (`store.schema`), filled by
column name.

Every stage imports this module and `store.schema`; no stage imports another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from operator import itemgetter

from ..store.schema import INGEST_GAPS, Table


class DecodeError(ValueError):
    """A message that cannot be stored; the text names the offending field."""


@dataclass(slots=True)
class FlowRows:
    """One stored L7 flow: its typed row (if HTTP or DNS) and its audit row; or, where the
    store derives those (store.derive), its row of the input table and no audit row."""
    flow_id: str  # in the typed row: always a UUID's text (see schema.uuid_text); the input row's is audit_id
    time_ns: int
    node: str
    table: Table | None
    row: tuple | None
    audit_row: tuple | None
    audit_id: str  # in the audit row and the checkpoint: Hubble's uuid as it came, else the content hash
    # Bytes of memory the decoded flow holds, as the byte budgets count them (decoder.held_bytes).
    size: int = 0


@dataclass(slots=True)
class GapRow:
    """One row of ingest_gaps: something that may be missing, on record."""
    gap_id: str
    time_ns: int
    node: str
    row: tuple


@dataclass(slots=True)
class Filtered:
    """A flow that is not L7 (trace, drop, policy-verdict events): counted, not stored."""
    kind: str
    node: str
    time_ns: int


@dataclass(slots=True)
class OtherEvent:
    """An agent or debug event from an exporter file: counted, not stored."""
    kind: str  # agent_event or debug_event
    node: str


@dataclass(slots=True)
class Tally:
    """Input that is counted in the ledger but not stored: non-L7 flows, dead letters."""
    node: str
    time_ns: int = 0
    filtered: int = 0
    quarantined: int = 0


@dataclass(slots=True)
class FilePosition:
    """Where a file source stands in one followed file: every line before `offset` (bytes
    of the file whose first line hashes to `fingerprint`; line `line`) is in an entry put
    in the inbox before this one. Not a row: the batch carries it to the checkpoint."""
    path: str  # the followed file as configured
    fingerprint: str
    offset: int
    line: int


@dataclass(slots=True)
class Entry:
    """One decoded item from `source`; maybe_stored marks rows an earlier run or connection may have stored."""
    item: FlowRows | GapRow | Tally | FilePosition
    maybe_stored: bool
    source: str
    # What the memory budgets count it as: a flow's protobuf bytes, else a small fixed size.
    size: int = 256


END = object()  # put in the inbox by a source that has no more input

# Later than any flow: in a window that looks up every flow (a replayed file).
EVERY_FLOW = 2**63 - 1


@dataclass(slots=True)
class Window:
    """One stretch of a source's input read in one go: a Hubble stream from connect to
    break, or one file. What it knows of that input decides what is looked up before it
    is stored; the dispatcher counts what it read."""
    # What the ledger calls the source: the Hubble address or the file.
    source: str
    # How the place of a message is named in a dead letter: {source} and {n}, the count read.
    place: str
    # Flows at or before this time may be stored already: they are looked up.
    maybe_stored_until_ns: int = EVERY_FLOW
    # Node name -> the newest flow time read of that node, where the next window resumes.
    newest_by_node: dict[str, int] = field(default_factory=dict)
    # Node name -> this host's clock when a flow of that node was read last: a node not
    # heard from for long no longer holds the resume point back.
    seen_by_node: dict[str, int] = field(default_factory=dict)
    read: int = 0
    flows: int = 0
    filtered: int = 0
    gaps: int = 0
    bad: int = 0
    # Agent and debug events (exporter files): counted, not stored.
    events: int = 0

    @property
    def newest_ns(self) -> int:
        return max(self.newest_by_node.values(), default=0)

    def last_place(self) -> str:
        """Where the message read last came from: file:line, or the stream and message number."""
        return self.place.format(source=self.source, n=self.read)


# The source of the batches that record unreadable spool files: not input of this run.
RECORD_SOURCE = "spool"


@dataclass
class SealedBatch:
    """A closed batch, as the spool keeps it and the sink stores it."""
    batch_id: str
    source: str
    # Table name -> rows, in the table's column order.
    rows: dict[str, list[tuple]]
    # Table name -> ids of rows that may be stored already; looked up once, before the first insert.
    check_stored: dict[str, set[str]]
    # The newest flow's time.
    newest_ns: int
    # (source, node) -> counters kept for the ledger (received, filtered, quarantined, and
    # the oldest and newest time of anything seen) and the newest flow's time
    # (newest_flow_ns), which the checkpoint keeps.
    tallies: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    created_ns: int = 0
    # Set once the lookups are done and `rows` hold exactly what must be inserted.
    resolved: bool = False
    # A file source's followed file -> (fingerprint, offset, line) after the batch's last
    # line of it (FilePosition); None from the Hubble source, and in older spool files.
    positions: dict[str, tuple[str, int, int]] | None = None
    # The input table's rows (store.derive = store) as their insert sends them and the
    # spool file keeps them (store.flow_input.compressed_body): made when the batch is
    # first spooled; None before, and once lookups drop some of those rows.
    input_body: bytes | None = None

    def newest_flow_by_node(self) -> dict[str, int]:
        """Node name -> the time of its newest flow in the batch."""
        return {node: tally["newest_flow_ns"] for (_, node), tally in self.tallies.items()
                if "newest_flow_ns" in tally}


_gap_row = itemgetter(*INGEST_GAPS.column_names)


def gap(gap_id: str, time_ns: int, node: str, **columns) -> GapRow:
    """A GapRow of ingest_gaps, its values given by column name (gap_id, time and node included)."""
    return GapRow(gap_id, time_ns, node, _gap_row({"gap_id": gap_id, "time": time_ns, "node": node, **columns}))


def interruption_gap(source: str, node: str, first_ns: int, last_ns: int, message: str) -> GapRow:
    """A stream that broke between first_ns and last_ns; resuming may or may not cover it."""
    gap_id = hashlib.blake2b(f"{source}|{node}|{first_ns}|{last_ns}".encode(), digest_size=16).hexdigest()
    return gap(gap_id, last_ns, node=node, kind="stream_interrupted", source=source, count=0, first=first_ns,
               last=last_ns, message=message)


def unreadable_spool_gap(kept_at: str, file_id: str, written_ns: int, message: str) -> GapRow:
    """A spooled batch that could not be read back or stored: its flows (or, as message
    says, some of them) are not stored, and how many there were is unknown. The row's
    times are when the file was written (its flows are a little older) and its id comes
    from the file (file_id: name, size, mtime), so working on the same file again gives
    the same row; source is where the file is kept."""
    gap_id = hashlib.blake2b(f"spool|{file_id}".encode(), digest_size=16).hexdigest()
    return gap(gap_id, written_ns, node="", kind="spool_unreadable", source=kept_at, count=0, first=written_ns,
               last=written_ns, message=message)
