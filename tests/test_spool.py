"""The spool's files: what one build writes, the next reads; what no build wrote is moved aside and recorded."""

from __future__ import annotations

import marshal
import os
import pickle

import pytest

from ingest.store.schema import INGEST_GAPS
from ingest.pipeline.records import SealedBatch
from ingest.pipeline.spool import Spool
from ingest.runner import Writer

from .helpers import legacy_pickle


def _batch(batch_id: str) -> SealedBatch:
    """Values of every kind a row holds, in a row as long as the table's."""
    rows = {INGEST_GAPS.name: [(1741078800000263928, "node-1", "id-1", None, True, ["k8s:app=a"], {"Accept": "*/*"},
                                b"\x0a\x00", 2 ** 63)]}
    return SealedBatch(batch_id, "hubble:4245", rows, {INGEST_GAPS.name: {"id-1"}}, 1741078800000263928,
                        {("hubble:4245", "node-1"): {"received": 1, "oldest_ns": 5}}, created_ns=7)


def test_a_batch_reads_back_as_written(tmp_path):
    Spool(tmp_path, 1 << 20).append(_batch("b1"))
    path, batch = Spool(tmp_path, 1 << 20).next()  # a new Spool: read from the file, as after a restart
    assert batch == _batch("b1")


def test_a_batch_pickled_by_an_earlier_build_is_read(tmp_path):
    (tmp_path / "000000000001.batch").write_bytes(legacy_pickle(_batch("old")))
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_batch("new"))
    assert [spool.next()[1].batch_id, spool.newest().batch_id] == ["old", "new"]


def _v5_batch() -> SealedBatch:
    """A batch as the build of schema version 5 spooled it: http_flows rows with path and
    query, and a flow_id in any text (here one that is no UUID)."""
    from .helpers import DNS_330, HTTP_348
    from .helpers import rows_as_of

    lines = HTTP_348.read_bytes().splitlines()[:6] + DNS_330.read_bytes().splitlines()[:4]
    lines[6] = lines[6].replace(b'"flow":{', b'"flow":{"uuid":"flow-17",', 1)
    rows = rows_as_of(lines, 5)
    ids = {row[2] for row in rows["l7_audit"]}
    assert "flow-17" in ids and rows["dns_flows"][0][2] == "flow-17"
    return SealedBatch("v5", "file", rows, {"dns_flows": {"flow-17"}, "l7_audit": ids}, 0,
                        {("file", "node"): {"received": 10}}, created_ns=7)


@pytest.mark.parametrize("written_by", ["marshal", "pickle"])
def test_a_batch_spooled_before_schema_version_6_is_read_in_its_layout(tmp_path, written_by):
    from ingest.store.schema import uuid_text
    from ingest.store.migrations import columns_as_of
    from ingest.store.schema import DNS_FLOWS, HTTP_FLOWS

    old = _v5_batch()
    if written_by == "marshal":  # as the v5 build wrote it: no schema_version
        data = b"flowlog-spool 2 marshal\n" + marshal.dumps({k: getattr(old, k) for k in old.__dataclass_fields__})
    else:
        data = legacy_pickle(old)
    (tmp_path / "000000000001.batch").write_bytes(data)
    batch = Spool(tmp_path, 1 << 20).next()[1]
    v5_names = [c.name for c in columns_as_of(HTTP_FLOWS, 5)]
    for before, after in zip(old.rows["http_flows"], batch.rows["http_flows"], strict=True):
        # A column added since (aggregate_count) gets its type's zero.
        assert dict(zip(HTTP_FLOWS.column_names, after)) == {k: v for k, v in zip(v5_names, before)
                                                            if k not in ("path", "query")} | {"aggregate_count": 0}
    # The typed row's id as the decoder now makes it; the audit row's as it was.
    assert batch.rows["dns_flows"][0][DNS_FLOWS.column_names.index("flow_id")] == uuid_text("flow-17")
    assert batch.check_stored == {"dns_flows": {uuid_text("flow-17")}, "l7_audit": old.check_stored["l7_audit"]}
    assert [row[:-1] for row in batch.rows["dns_flows"][1:]] == old.rows["dns_flows"][1:]
    assert batch.rows["l7_audit"] == [row + (0,) for row in old.rows["l7_audit"]]


def test_a_batch_spooled_before_schema_version_6_is_stored(config, client, tmp_path):
    from ingest.pipeline.sink import Sink

    old = _v5_batch()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "000000000001.batch").write_bytes(legacy_pickle(old))
    assert Writer(Spool(spool_dir, 1 << 20), Sink(client, config.store.database)).drain(force=True)
    db = config.store.database
    counts = client.query(f"SELECT (SELECT count() FROM `{db}`.http_flows), (SELECT count() FROM `{db}`.dns_flows), "
                          f"(SELECT countIf(path != '') FROM `{db}`.http_flows)").result_rows
    assert counts == [(len(old.rows["http_flows"]), len(old.rows["dns_flows"]), len(old.rows["http_flows"]))]


@pytest.mark.parametrize("damage, reason", [
    (lambda rows: rows.__setitem__(slice(None), [row[:5] for row in rows]), "fit no schema version"),
    (lambda rows: rows.__setitem__(1, rows[1][:5]), "http_flows rows of uneven length (5 to 33 values)"),
    (lambda rows: rows.__setitem__(1, rows[1] + ("more",)), "http_flows rows of uneven length (33 to 34 values)"),
    (lambda rows: rows.__setitem__(1, 17), "rows unlike any this build knows: TypeError"),
    (lambda rows: rows.__setitem__(0, rows[0][:2] + (17,) + rows[0][3:]), "rows unlike any this build knows"),
])
def test_old_rows_that_fit_no_layout_make_the_file_unreadable(tmp_path, damage, reason):
    broken = _v5_batch()
    damage(broken.rows["http_flows"])
    (tmp_path / "000000000001.batch").write_bytes(legacy_pickle(broken))
    _, record = Spool(tmp_path, 1 << 20).next()
    assert list(record.rows) == [INGEST_GAPS.name] and reason in record.rows[INGEST_GAPS.name][0][-1]


@pytest.mark.parametrize("cut", [1, -1], ids=["one value short", "one value more"])
def test_rows_of_another_length_than_the_current_layout_make_the_file_unreadable(tmp_path, cut):
    """Before, such a row reached the sink, which failed on it at every start."""
    from ingest.store.migrations import SCHEMA_VERSION

    batch = _batch("short")
    [row] = batch.rows[INGEST_GAPS.name]
    batch.rows[INGEST_GAPS.name] = [row[:-1] if cut == 1 else row + (None,)]
    values = {k: getattr(batch, k) for k in batch.__dataclass_fields__} | {"schema_version": SCHEMA_VERSION}
    (tmp_path / "000000000001.batch").write_bytes(b"flowlog-spool 2 marshal\n" + marshal.dumps(values))
    _, record = Spool(tmp_path, 1 << 20).next()
    assert record.source == "spool"
    width = len(INGEST_GAPS.column_names)
    assert (f"ingest_gaps rows of {width - cut} values, where schema version {SCHEMA_VERSION} has {width}"
            in record.rows[INGEST_GAPS.name][0][-1])


def test_rows_of_the_current_layout_from_a_file_that_does_not_say_are_read_as_they_are(tmp_path):
    """The first build of schema version 6 did not record it yet."""
    from .helpers import HTTP_348, rows_as_of

    rows = rows_as_of(HTTP_348.read_bytes().splitlines()[:3], 6)["http_flows"]
    batch = SealedBatch("v6", "file", {"http_flows": rows}, {}, 0, {})
    (tmp_path / "000000000001.batch").write_bytes(legacy_pickle(batch))
    # As they are, and the column added since (aggregate_count) its type's zero.
    assert Spool(tmp_path, 1 << 20).next()[1].rows == {"http_flows": [row + (0,) for row in rows]}


def _moved() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("flowlog_spool_unreadable_files_total") or 0.0


NOT_A_BATCH = [
    b"",
    b"flowlog-spool 2 marshal\n\x00\x01",  # truncated marshal data
    b"flowlog-spool 2 marshal\n" + marshal.dumps([1, 2]),  # marshal, but not a batch's fields
    b"\x80\x05garbage",
    pickle.dumps({"a": 1}, protocol=2),  # a pickle, but not of a batch
    b"\x80\x02cno_such_module\nThing\nq\x00)\x81q\x01.",  # a pickle of a class that is nowhere
    b"hello",
]


@pytest.mark.parametrize("content", NOT_A_BATCH)
def test_an_unreadable_file_is_moved_aside_and_recorded_in_its_place(tmp_path, content, caplog):
    before = _moved()
    (tmp_path / "000000000001.batch").write_bytes(content)
    Spool(tmp_path, 1 << 20).append(_batch("good"))
    spool = Spool(tmp_path, 1 << 20)
    with caplog.at_level("ERROR", logger="ingest.pipeline.spool"):
        path, record = spool.next()
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.name.endswith("-000000000001.batch") and aside.read_bytes() == content
    assert "000000000001.batch: " in caplog.text and str(aside) in caplog.text
    assert _moved() - before == 1
    # In the file's place: a batch holding the ingest_gaps row that records the loss.
    assert path.name == "000000000001.batch" and not record.resolved
    [row] = record.rows["ingest_gaps"]
    gap = dict(zip(INGEST_GAPS.column_names, row))
    assert (gap["kind"], gap["source"], gap["node"], gap["count"]) == ("spool_unreadable", str(aside), "", 0)
    assert gap["message"].startswith(f"{tmp_path / '000000000001.batch'}: ")
    assert record.check_stored == {"ingest_gaps": {gap["gap_id"]}}
    spool.done(path)
    assert spool.next()[1].batch_id == "good"
    # The record is a spool file like any other: it survives a restart until stored.
    assert len(Spool(tmp_path, 1 << 20)) == 1


def test_newest_is_the_record_of_an_unreadable_newest_file(tmp_path):
    # The runner advances the checkpoint from newest(); a record holds no flows, so it does
    # not (the checkpoint was advanced when each batch was spooled anyway).
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_batch("older"))
    spool.append(_batch("newer"))
    (tmp_path / "000000000002.batch").write_bytes(b"flowlog-spool 2 marshal\n")
    newest = Spool(tmp_path, 1 << 20).newest()
    assert newest.rows["ingest_gaps"] and newest.newest_ns == 0
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.read_bytes() == b"flowlog-spool 2 marshal\n"


def test_files_named_otherwise_are_moved_aside_at_start(tmp_path):
    Spool(tmp_path, 1 << 20).append(_batch("good"))
    for name in ("notes.batch", "².batch"):  # '²' is a digit to str.isdigit, not to int()
        (tmp_path / name).write_bytes(b"written by hand")
    spool = Spool(tmp_path, 1 << 20)
    assert [p.name for p in spool._files()] == ["000000000001.batch", "000000000002.batch", "000000000003.batch"]
    assert spool.next()[1].batch_id == "good"
    assert spool.append(_batch("next")).name == "000000000004.batch"
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "unreadable").iterdir()) == ["notes.batch", "².batch"]


def test_a_full_disk_keeps_the_file_aside_without_a_record(tmp_path, monkeypatch, caplog):
    import errno

    (tmp_path / "000000000001.batch").write_bytes(b"hello")

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "_write_aside", disk_full)
    with caplog.at_level("ERROR", logger="ingest.pipeline.spool"):
        assert Spool(tmp_path, 1 << 20).next() is None
    assert [p.read_bytes() for p in (tmp_path / "unreadable").iterdir()] == [b"hello"]
    assert "no ingest_gaps row records it" in caplog.text and "No space left on device" in caplog.text


def test_files_moved_aside_under_the_same_name_are_all_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.pipeline.spool.time.strftime", lambda *_: "20261126T000000Z")  # all in one second
    for content in (b"first", b"second", b"third"):
        (tmp_path / "000000000001.batch").write_bytes(content)
        spool = Spool(tmp_path, 1 << 20)
        spool.done(spool.next()[0])  # the record of it, stored
    kept = sorted(p.read_bytes() for p in (tmp_path / "unreadable").iterdir())
    assert kept == [b"first", b"second", b"third"]


def test_the_loss_reaches_the_store_and_the_completeness_query(config, client, tmp_path):
    from ingest.store import queries
    from ingest.pipeline.sink import Sink

    spool = Spool(config.state_path / "spool", 1 << 20)
    spool.append(_batch("good"))
    (config.state_path / "spool" / "000000000001.batch").write_bytes(b"flowlog-spool 2 marshal\n\x00")
    spool = Spool(config.state_path / "spool", 1 << 20)
    sink = Sink(client, config.store.database)
    assert Writer(spool, sink).drain(force=True) and len(spool) == 0
    db = config.store.database
    gaps = client.query(f"SELECT kind, source, node FROM `{db}`.ingest_gaps").result_rows
    [aside] = (config.state_path / "spool" / "unreadable").iterdir()
    assert gaps == [("spool_unreadable", str(aside), "")]
    # A file moved aside again after a crash (its record already stored) gives the same row,
    # which the sink finds stored.
    (config.state_path / "spool" / "000000000003.batch").write_bytes(aside.read_bytes())
    os.utime(config.state_path / "spool" / "000000000003.batch", ns=(aside.stat().st_atime_ns,
                                                                     aside.stat().st_mtime_ns))
    (config.state_path / "spool" / "000000000003.batch").rename(config.state_path / "spool" / "000000000001.batch")
    assert Writer(Spool(config.state_path / "spool", 1 << 20), sink).drain(force=True)
    assert client.query(f"SELECT count() FROM `{db}`.ingest_gaps").result_rows == [(1,)]
    rows = queries.load()["ingest_completeness"].rows(client, {"from": "2000-01-01", "until": "2200-01-01"}, db)
    assert [(r["node"], r["spool_batches_lost"]) for r in rows if r["spool_batches_lost"]] == [("", 1)]


def _decoded_batch(batch_id: str, lines: list[bytes], damage: tuple[str, int, str, object] | None = None
                   ) -> SealedBatch:
    """A spooled batch of decoded fixture lines; damage (table, row, column, value) gives one
    typed row a value its column cannot take, as only a defect in the decoder would."""
    from ingest.decode.decoder import Decoder
    from ingest.store.schema import DATA_TABLES
    from ingest.sources.files import parse_line

    decoder = Decoder()
    rows: dict[str, list[tuple]] = {}
    for line in lines:
        flow = decoder.decode(parse_line(line))
        rows.setdefault(flow.table.name, []).append(flow.row)
        rows.setdefault("l7_audit", []).append(flow.audit_row)
    if damage is not None:
        table, at, column, value = damage
        row, index = rows[table][at], next(t for t in DATA_TABLES if t.name == table).column_names.index(column)
        rows[table][at] = row[:index] + (value,) + row[index + 1:]
    return SealedBatch(batch_id, "file", rows, {}, 0, {("file", "node"): {"received": len(lines)}},
                        created_ns=7)


def _http_and_dns_lines() -> tuple[list[bytes], list[bytes]]:
    from .helpers import DNS_330, HTTP_348

    return HTTP_348.read_bytes().splitlines(), DNS_330.read_bytes().splitlines()


@pytest.mark.parametrize("damage, message", [
    (("http_flows", 1, "status_code", 70000),
     "the store's client refused its http_flows rows: DataError: Unable to create native array for column "
     "`status_code`: error; the flows of this spooled batch are not stored"),
    (("http_flows", 0, "flow_id", "not-a-uuid"),
     "the store's client refused its http_flows rows: ValueError: invalid literal for int() with base 16: 'notauuid'; "
     "the flows of this spooled batch are not stored"),
    (("dns_flows", 0, "rcode", 70000),
     "the store's client refused its dns_flows rows: DataError: Unable to create native array for column "
     "`rcode`: error; only its http_flows rows are stored"),
], ids=["value too large", "value of the wrong kind", "after one table was stored"])
def test_a_batch_the_store_client_refuses_is_set_aside_and_the_next_one_stored(config, client, tmp_path, damage,
                                                                                message):
    from ingest.pipeline.sink import Sink

    http, dns = _http_and_dns_lines()
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_decoded_batch("refused", http[:3] + dns[:2], damage))
    spool.append(_decoded_batch("next", http[3:7]))
    before = _moved()
    assert Writer(spool, Sink(client, config.store.database)).drain(force=True)  # before the fix: retried forever
    assert len(spool) == 0 and _moved() - before == 1
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.name.endswith("-000000000001.batch")
    db = config.store.database
    [(kind, source, stored_message)] = client.query(f"SELECT kind, source, message FROM `{db}`.ingest_gaps"
                                                    ).result_rows
    assert (kind, source) == ("spool_unreadable", str(aside))
    assert stored_message == f"{tmp_path / '000000000001.batch'}: {message}"
    counts = client.query(f"SELECT (SELECT count() FROM `{db}`.http_flows), (SELECT count() FROM `{db}`.dns_flows), "
                          f"(SELECT count() FROM `{db}`.l7_audit)").result_rows
    assert counts == [(4 + (3 if "only its" in message else 0), 0, 4)]


def test_batch_after_batch_refused_is_a_failing_store_not_batches_to_set_aside(config, client, tmp_path):
    """When the next batch is refused too, the fault is not in a batch (a column's type
    changed under the ingester, say): setting batches aside would discard them all."""
    from ingest.pipeline.sink import Sink

    http, dns = _http_and_dns_lines()
    spool = Spool(tmp_path, 1 << 20)
    refused = ("http_flows", 0, "status_code", 70000)
    spool.append(_decoded_batch("http 1", http[:3], refused))
    spool.append(_decoded_batch("dns", dns[:3]))  # stored: it has no rows for the refusing table
    spool.append(_decoded_batch("http 2", http[3:6], refused))
    spool.append(_decoded_batch("http 3", http[6:9]))
    sink = Sink(client, config.store.database)
    assert not Writer(spool, sink).drain(force=True)
    assert len(list((tmp_path / "unreadable").iterdir())) == 1 and not sink.healthy
    # The first batch's record and the DNS batch were stored; the second HTTP batch waits, the third behind it.
    assert [spool.next()[1].batch_id, len(spool)] == ["http 2", 2]
    assert not Writer(spool, sink).drain(force=True) and len(spool) == 2
    db = config.store.database
    assert client.query(f"SELECT (SELECT count() FROM `{db}`.dns_flows), (SELECT count() FROM `{db}`.http_flows)"
                        ).result_rows == [(3, 0)]


def test_a_table_that_took_rows_before_a_refusal_at_the_next_table_is_no_longer_refusing(config, client, tmp_path):
    from ingest.pipeline.sink import Sink

    http, dns = _http_and_dns_lines()
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_decoded_batch("http refused", http[:3], ("http_flows", 0, "status_code", 70000)))
    # Its http_flows rows go in (the table takes rows again), then its dns_flows rows are refused.
    spool.append(_decoded_batch("dns refused", http[3:6] + dns[:2], ("dns_flows", 0, "rcode", 70000)))
    spool.append(_decoded_batch("http refused again", http[6:9], ("http_flows", 1, "status_code", 70000)))
    sink = Sink(client, config.store.database)
    assert Writer(spool, sink).drain(force=True) and sink.healthy  # each refusal was about one batch
    assert len(list((tmp_path / "unreadable").iterdir())) == 3


@pytest.mark.parametrize("days, lifted", [(100, False), (101, True)])
def test_the_partition_limit_is_lifted_only_for_a_block_spanning_more_days_than_it_allows(days, lifted):
    from ingest.pipeline.sink import _partitions_setting

    rows = [(day * 86_400 * 10**9 + 5,) for day in range(days)] * 2
    assert _partitions_setting(rows, 0) == ({"max_partitions_per_insert_block": 0} if lifted else {})


def test_unreadable_keeps_the_newest_files_within_the_spools_size(tmp_path, caplog):
    kept = tmp_path / "unreadable"
    for number in range(1, 6):
        (tmp_path / f"{number:012d}.batch").write_bytes(b"x" * 400)
        Spool(tmp_path, 1000).next()  # each read in its own start: moved aside, a record in its place
        for record in list(tmp_path.glob("*.batch")):
            record.unlink()
    # Each start moved one file; the newest two fit in 1000 bytes, the third would not.
    assert sorted(p.name[17:] for p in kept.iterdir()) == ["000000000004.batch", "000000000005.batch"]
    assert "within spool.max_mb" in caplog.text
    (tmp_path / "000000000006.batch").write_bytes(b"x" * 5000)
    Spool(tmp_path, 1000).next()
    assert [p.name[17:] for p in kept.iterdir()] == ["000000000006.batch"]  # the newest, whatever its size


def _input_batch(batch_id: str) -> SealedBatch:
    """A batch of flow_input rows (store.derive = store), as the decoder makes them."""
    from ingest.decode.decoder import Decoder
    from ingest.store.flow_input import FLOW_INPUT

    from .helpers import ALL_FIXTURES, fixture_lines, responses_of

    from ingest.pipeline.records import FlowRows

    decoder = Decoder(derive_in_store=True)
    decoded = [decoder.decode(response) for path in ALL_FIXTURES for response in responses_of(fixture_lines(path))]
    rows = [flow.row for flow in decoded if type(flow) is FlowRows]
    return SealedBatch(batch_id, "hubble:4245", {FLOW_INPUT.name: rows}, {}, 0,
                       {("hubble:4245", "node-1"): {"received": len(rows)}}, created_ns=7)


def _as_lists(rows: list[tuple]) -> list[tuple]:
    return [tuple(list(v) if isinstance(v, (list, tuple)) else v for v in row) for row in rows]


def test_input_rows_are_spooled_as_their_compressed_insert_body_and_read_back_whole(tmp_path):
    """store.derive = store: a batch's flow_input rows go to its file as the body its insert
    sends (lz4 of the FlowInput messages), made once; after a restart they read back as
    the same rows, and the body with them."""
    from ingest.store import flow_input
    from ingest.store.flow_input import FLOW_INPUT

    written = _input_batch("in-1")
    rows = written.rows[FLOW_INPUT.name]
    assert len(rows) > 678
    Spool(tmp_path, 1 << 30).append(written)
    body = written.input_body
    assert body is not None and flow_input.rows_of_body(body) and len(body) * 3 < len(marshal.dumps(rows))
    (file,) = tmp_path.glob("*.batch")
    assert file.stat().st_size < len(body) + 4096  # the rows are not in it a second time
    _, read = Spool(tmp_path, 1 << 30).next()
    assert _as_lists(read.rows[FLOW_INPUT.name]) == _as_lists(rows) and read.input_body == body
    assert flow_input.encode(read.rows[FLOW_INPUT.name]) == flow_input.encode(rows)


def test_input_rows_spooled_as_rows_by_the_previous_build_are_read(tmp_path):
    """The build before spooled flow_input rows themselves (schema version 10, no body)."""
    from ingest.pipeline.spoolfile import HEADER
    from ingest.store.flow_input import FLOW_INPUT

    batch = _input_batch("in-old")
    values = {name: getattr(batch, name) for name in ("batch_id", "source", "rows", "check_stored", "newest_ns",
                                                      "tallies", "created_ns", "resolved", "positions")}
    (tmp_path / "000000000001.batch").write_bytes(HEADER + marshal.dumps(values | {"schema_version": 10}))
    _, read = Spool(tmp_path, 1 << 30).next()
    assert read.rows[FLOW_INPUT.name] == batch.rows[FLOW_INPUT.name] and read.input_body is None


def test_a_file_without_input_rows_has_nothing_the_previous_build_cannot_read(tmp_path):
    """The build before input_body made a batch of every key in a file: only a store-mode
    batch's file holds the body, and so only such a file is new to it."""
    from ingest.pipeline.spoolfile import HEADER

    Spool(tmp_path, 1 << 20).append(_batch("b1"))
    (file,) = tmp_path.glob("*.batch")
    values = marshal.loads(file.read_bytes()[len(HEADER):])
    assert "input_body" not in values and values["batch_id"] == "b1"


def test_input_rows_no_body_can_hold_are_spooled_as_rows(tmp_path):
    """A value encode cannot write (the decoder makes none) is the sink's to refuse, with
    the batch set aside and recorded; the spool keeps the rows as they are."""
    from ingest.store.flow_input import FLOW_INPUT

    batch = _input_batch("odd")
    rows = batch.rows[FLOW_INPUT.name]
    rows[0] = (12345,) + rows[0][1:]  # an int where the flow's bytes go
    Spool(tmp_path, 1 << 30).append(batch)
    assert batch.input_body is None
    _, read = Spool(tmp_path, 1 << 30).next()
    assert read.rows[FLOW_INPUT.name][0][0] == 12345 and len(read.rows[FLOW_INPUT.name]) == len(rows)


def test_a_body_is_read_back_a_megabyte_at_a_time(tmp_path):
    """Reading a batch back holds its rows and at most a megabyte or two of the body
    uncompressed, not the whole of it besides."""
    import tracemalloc

    from ingest.store import flow_input
    from ingest.store.flow_input import FLOW_INPUT

    rows = _input_batch("big").rows[FLOW_INPUT.name] * 8
    body = flow_input.compressed_body(rows)
    uncompressed = len(flow_input.encode(rows))
    assert uncompressed > 8 * 2**20
    tracemalloc.start()
    try:
        read = flow_input.rows_of_body(body)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(read) == len(rows)
    assert peak - held < 4 * 2**20, (peak - held, uncompressed)
    with pytest.raises(ValueError):
        flow_input.rows_of_body(body[:len(body) // 2])


def test_a_damaged_or_lengthened_body_is_refused_not_read_as_other_rows():
    """A spool file damaged on disk is moved aside and recorded; the body's lz4 checksum
    makes sure a flipped bit is noticed rather than read back as other values."""
    import random

    from ingest.store import flow_input
    from ingest.store.flow_input import FLOW_INPUT

    body = flow_input.compressed_body(_input_batch("damaged").rows[FLOW_INPUT.name][:200])
    picks = random.Random(7)
    for position in [5, len(body) - 2] + picks.sample(range(len(body)), 60):
        damaged = bytearray(body)
        damaged[position] ^= 1 << picks.randrange(8)
        with pytest.raises(Exception):
            flow_input.rows_of_body(bytes(damaged))
    with pytest.raises(ValueError, match="goes on after"):
        flow_input.rows_of_body(body + b"more")
