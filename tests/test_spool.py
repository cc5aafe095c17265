"""The spool's files: what one build writes, the next reads; what no build wrote is refused by name."""

from __future__ import annotations

import pickle

import pytest

from ingest.spool import Spool, SpooledBatch, SpoolError


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
def test_a_file_that_is_no_spooled_batch_is_refused_by_name(tmp_path, content):
    (tmp_path / "000000000001.batch").write_bytes(content)
    with pytest.raises(SpoolError, match="000000000001.batch: "):
        Spool(tmp_path, 1 << 20).oldest()
