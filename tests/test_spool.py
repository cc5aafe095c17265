"""The spool's files: what one build writes, the next reads; what no build wrote is refused by name."""

from __future__ import annotations

import pickle

import pytest

from ingest.spool import Spool, SpooledBatch


def _batch(batch_id: str) -> SpooledBatch:
    rows = {"http_flows": [(1741078800000263928, "node-1", "id-1", None, True, ["k8s:app=a"], {"Accept": "*/*"},
                            b"\x0a\x00", 2 ** 63)]}
    return SpooledBatch(batch_id, "hubble:4245", rows, {"http_flows": {"id-1"}}, 1741078800000263928, {"id-1"},
                        {("hubble:4245", "node-1"): {"received": 1, "oldest_ns": 5}}, created_ns=7)


def test_a_batch_reads_back_as_written(tmp_path):
    Spool(tmp_path, 1 << 20).append(_batch("b1"))
    path, batch = Spool(tmp_path, 1 << 20).oldest()  # a new Spool: read from the file, as after a restart
    assert batch == _batch("b1")


def test_a_batch_pickled_by_an_earlier_build_is_read(tmp_path):
    (tmp_path / "000000000001.batch").write_bytes(pickle.dumps(_batch("old"), protocol=pickle.HIGHEST_PROTOCOL))
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_batch("new"))
    assert [spool.oldest()[1].batch_id, spool.newest().batch_id] == ["old", "new"]


@pytest.mark.parametrize("content", [b"", b"flowlog-spool 2 marshal\n\x00\x01", b"\x80\x05garbage", b"hello"])
def test_an_unreadable_file_is_moved_aside_by_name_and_the_next_batch_is_taken(tmp_path, content, caplog):
    from prometheus_client import REGISTRY

    def moved() -> float:
        return REGISTRY.get_sample_value("flowlog_spool_unreadable_files_total") or 0.0

    before = moved()
    (tmp_path / "000000000001.batch").write_bytes(content)
    Spool(tmp_path, 1 << 20).append(_batch("good"))
    spool = Spool(tmp_path, 1 << 20)
    with caplog.at_level("ERROR", logger="ingest.spool"):
        path, batch = spool.oldest()
    assert (path.name, batch.batch_id, len(spool)) == ("000000000002.batch", "good", 1)
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.name.endswith("-000000000001.batch") and aside.read_bytes() == content
    assert "000000000001.batch: " in caplog.text and str(aside) in caplog.text
    assert moved() - before == 1
    # Files moved aside are no longer spooled batches, not even after a restart.
    assert [p.name for p in Spool(tmp_path, 1 << 20)._files()] == ["000000000002.batch"]


def test_the_newest_readable_batch_is_found_past_an_unreadable_one(tmp_path):
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_batch("older"))
    spool.append(_batch("newer"))
    (tmp_path / "000000000002.batch").write_bytes(b"flowlog-spool 2 marshal\n")
    assert Spool(tmp_path, 1 << 20).newest().batch_id == "older"
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.read_bytes() == b"flowlog-spool 2 marshal\n"
