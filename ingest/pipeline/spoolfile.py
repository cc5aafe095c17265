"""The spool's file format, and reading what older builds wrote.

A file is a header naming the format, then a `SealedBatch`'s fields by name, and the
schema version of its rows' layout, in `marshal` format: rows are tuples of str, int,
bytes, lists and dicts, which marshal writes 2.5 times as fast as pickle (3.1 against
7.7 µs a flow); marshal reads what older Pythons wrote. Earlier builds pickled the batch
(as `ingest.spool.SpooledBatch`): those files are still read, by an unpickler that makes
nothing but a batch.

A batch of `store.derive = store` keeps its flow_input rows as the lz4 body their
insert sends (`SealedBatch.input_body`, a sixth of what the rows marshalled take), and
they are read back from it; a file with no such rows has no such key, so the build
before this one still reads it.

A batch holds rows in the layout of the schema version that wrote it; one written by an
older build (before schema version 6 the file did not say, so it is told by the rows'
lengths) is brought to this version's layout when read: columns matched by name, a
column it lacks given its type's zero, a removed or computed one dropped, and a
flow_id that is no UUID replaced as `schema.uuid_text` says. Anything else that is not
a batch this build can store raises `SpoolFileError`, naming the file and why.
"""

from __future__ import annotations

import io
import marshal
import pickle
from dataclasses import fields
from pathlib import Path

from ..store.migrations import SCHEMA_VERSION, columns_as_of, created_in
from ..store import flow_input
from ..store.flow_input import FLOW_INPUT
from ..store.schema import DATA_TABLES, Table, uuid_text
from .records import SealedBatch

HEADER = b"flowlog-spool 2 marshal\n"
_FIELDS = tuple(f.name for f in fields(SealedBatch))
_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"
# The names earlier builds pickled a batch under, and this build's.
_BATCH_CLASSES = {("ingest.spool", "SpooledBatch"), (SealedBatch.__module__, SealedBatch.__qualname__)}
_TABLES = {t.name: t for t in DATA_TABLES + (FLOW_INPUT,)}
# A field of batches spooled by builds that resumed from the ids at the newest flow's time.
_NO_LONGER_KEPT = "ids_at_newest"
# Spool files say the schema version of their rows' layout from this version on.
_FIRST_RECORDED = 6


class SpoolFileError(RuntimeError):
    """A file the spool cannot read back as a batch this build can store."""


def write(batch: SealedBatch, handle) -> None:
    """The batch into an open binary file: the header, then the marshalled batch (written
    apart, not joined: a batch's marshal is tens of MB, and joining would copy it). The
    input table's rows go as the body their insert sends, made here once and kept with
    the batch (SealedBatch.input_body)."""
    values = {name: getattr(batch, name) for name in _FIELDS}
    input_rows = batch.rows.get(FLOW_INPUT.name)
    if input_rows and batch.input_body is None:
        try:
            batch.input_body = values["input_body"] = flow_input.compressed_body(input_rows)
        except (TypeError, ValueError, OverflowError):
            pass  # rows no body holds: kept as rows, for the sink to refuse and set aside
    if batch.input_body is not None:
        values["rows"] = {name: rows for name, rows in batch.rows.items() if name != FLOW_INPUT.name}
    else:
        # Files without one stay readable by the builds before input_body.
        del values["input_body"]
    handle.write(HEADER)
    handle.write(marshal.dumps(values | {"schema_version": SCHEMA_VERSION}))


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _BATCH_CLASSES:
            return SealedBatch
        raise pickle.UnpicklingError(f"{module}.{name} is no spooled batch")


def load(data: bytes, path: Path) -> SealedBatch:
    """The batch in a file's bytes, in this build's row layout; SpoolFileError if it is none."""
    try:
        version = None
        if data.startswith(HEADER):
            values = marshal.loads(memoryview(data)[len(HEADER):])
            version = values.pop("schema_version", None)
            values.pop(_NO_LONGER_KEPT, None)
            batch = SealedBatch(**values)
        elif data.startswith(_PICKLE_PROTOCOL_2_OR_LATER):
            batch = _BatchUnpickler(io.BytesIO(data)).load()
            batch.__dict__.pop(_NO_LONGER_KEPT, None)
        else:
            raise SpoolFileError(f"{path}: not a flowlog spool file (it begins {data[:24]!r})")
    except SpoolFileError:
        raise
    except Exception as err:  # a damaged or foreign file can fail in any way
        raise SpoolFileError(f"{path}: unreadable spool file: {type(err).__name__}: {err}") from None
    if not isinstance(batch, SealedBatch):
        raise SpoolFileError(f"{path}: holds a {type(batch).__name__}, not a spooled batch")
    try:
        if batch.input_body is not None:
            batch.rows[FLOW_INPUT.name] = flow_input.rows_of_body(batch.input_body)
        _check_widths(batch, version, path)
        if version != SCHEMA_VERSION:
            _to_current_layout(batch, version, path)
    except SpoolFileError:
        raise
    except Exception as err:  # rows that are no tuples, values of another type, ...
        raise SpoolFileError(f"{path}: rows unlike any this build knows: {type(err).__name__}: {err}") from None
    return batch


def _zero(column_type: str):
    for prefix, value in (("Array", []), ("Map", {}), ("Nullable", None), ("UInt", 0), ("Int", 0),
                          ("DateTime", 0)):
        if column_type.startswith(prefix):
            return value
    return ""


def _layout(table: Table, version: int | None, row_length: int, path: Path) -> tuple[int, list[str]]:
    """The schema version whose layout table's rows have, and its stored column names.
    A file that does not say is from a build before _FIRST_RECORDED: the newest version
    before that whose rows are that long, else (a build between) that version's."""
    versions = [version] if version is not None else [*range(_FIRST_RECORDED - 1, created_in(table) - 1, -1),
                                                        _FIRST_RECORDED]
    for v in versions:
        names = [c.name for c in columns_as_of(table, v) if not c.alias]
        if len(names) == row_length:
            return v, names
    raise SpoolFileError(f"{path}: {table.name} rows of {row_length} values fit no schema version up to "
                         f"{SCHEMA_VERSION}")


def _check_widths(batch: SealedBatch, version: int | None, path: Path) -> None:
    """Each table's rows are all as long as each other, and as this build's if it wrote them."""
    for name, rows in batch.rows.items():
        table = _TABLES.get(name)
        if table is None:
            raise SpoolFileError(f"{path}: rows of an unknown table {name}")
        widths = set(map(len, rows))
        if len(widths) > 1:
            raise SpoolFileError(f"{path}: {name} rows of uneven length ({min(widths)} to {max(widths)} values)")
        if version == SCHEMA_VERSION and widths and widths != {len(table.column_names)}:
            raise SpoolFileError(f"{path}: {name} rows of {widths.pop()} values, where schema version "
                                 f"{SCHEMA_VERSION} has {len(table.column_names)}")


def _to_current_layout(batch: SealedBatch, version: int | None, path: Path) -> None:
    for name, rows in batch.rows.items():
        table = _TABLES[name]
        if not rows:
            continue
        written, names = _layout(table, version, len(rows[0]), path)
        types = {c.name: c.type for c in columns_as_of(table, written)}
        stored = [c for c in table.columns if not c.alias]
        sources = [names.index(c.name) if c.name in names else None for c in stored]  # None: a column it lacks
        to_uuid = {i for i, c in enumerate(stored) if c.type == "UUID" and types.get(c.name) != "UUID"}
        zeros = [_zero(c.type) for c in stored]
        batch.rows[name] = [tuple(zeros[i] if at is None else uuid_text(row[at]) if i in to_uuid else row[at]
                                  for i, at in enumerate(sources)) for row in rows]
        if name == FLOW_INPUT.name:
            batch.input_body = None  # it holds the rows in their old layout
        if to_uuid and name in batch.check_stored:
            batch.check_stored[name] = {uuid_text(i) for i in batch.check_stored[name]}
