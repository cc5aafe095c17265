"""Sanity checks of the hubble CLI model and the history reference against the fixtures."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from ingest.api.flow import flow_pb2

from .helpers import DNS_330, HTTP_348
from .history_reference import (
    expected_responses,
    flow_time_ns,
    masked_response,
    matches,
)
from .hubble_cli import DEFAULT_FIELD_MASK, MAX_UINT64, build_request

NOW = datetime(2021, 10, 4, 15, 0, tzinfo=UTC)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


HTTP = _lines(HTTP_348)
DNS = _lines(DNS_330)


def _answer(argv, lines=HTTP):
    return expected_responses(build_request(argv, NOW), lines, NOW)


def test_namespace_request_shape():
    req = build_request(["--namespace", "kube-system", "-t", "l7"], NOW)
    assert req.number == 20 and not req.first and not req.follow
    assert not req.HasField("since") and not req.HasField("until")
    assert list(req.field_mask.paths) == list(DEFAULT_FIELD_MASK)
    assert len(req.whitelist) == 2 and not req.blacklist
    left, right = req.whitelist
    assert list(left.source_pod) == ["kube-system/"] and not left.destination_pod
    assert list(right.destination_pod) == ["kube-system/"] and not right.source_pod
    for ff in (left, right):
        assert [(t.type, t.match_sub_type) for t in ff.event_type] == [(129, False)]


def test_pod_namespace_and_negation_shapes():
    req = build_request(["-o", "json", "-n", "a", "--pod", "web", "--not", "--http-method", "GET"], NOW)
    assert not req.field_mask.paths
    assert [list(f.source_pod) for f in req.whitelist] == [["a/web"], []]
    assert [list(f.destination_pod) for f in req.whitelist] == [[], ["a/web"]]
    assert len(req.blacklist) == 1 and list(req.blacklist[0].http_method) == ["GET"]
    # --from-pod applies to both halves, which are then equal and sent once
    req = build_request(["--from-pod", "web"], NOW)
    assert [list(f.source_pod) for f in req.whitelist] == [["web"]]


def test_number_and_time_selection():
    assert build_request(["--all"], NOW).number == MAX_UINT64
    req = build_request(["--first", "5"], NOW)
    assert req.first and req.number == 5
    req = build_request(["--since", "2h", "--last", "10"], NOW)
    assert req.number == 10 and req.since.ToDatetime(UTC) == NOW - timedelta(hours=2)
    req = build_request(["--since", "1h"], NOW)
    assert req.number == 0  # a time range sends no default count
    req = build_request(["-f", "--until", "1h"], NOW)
    assert req.follow and req.number == 0 and not req.HasField("until")
    req = build_request(["--until", "2021-10-04T14:30:00.5Z"], NOW)
    assert (req.until.seconds, req.until.nanos) == (1633357800, 500_000_000)
    for bad in (["--first", "1", "--last", "1"], ["--first", "1", "--all"], ["--first", "1", "-f"],
                ["--last", "1", "--all"], ["--since", "7d"], ["--not"], ["--dns-query", "x"],
                ["--from-ip", "1.1.1.1", "--from-namespace", "x"], ["-o", "table", "-f"]):
        with pytest.raises(ValueError):
            build_request(bad, NOW)


def test_http_503_count_matches_readme():
    assert len(_answer(["--all", "--http-status", "503"])) == 151
    assert len(_answer(["--all", "--http-status", "5+"])) == 151
    assert len(_answer(["--all", "-t", "l7", "--http-status", "2+"])) == 22
    with pytest.raises(ValueError):  # http filters need the l7 event type
        _answer(["--all", "-t", "trace", "--http-status", "503"])


def test_label_selectors():
    def direct(label, side):
        return sum(1 for line in HTTP if label in line["flow"].get(side, {}).get("labels", []))

    assert len(_answer(["--all", "--from-label", "k8s:app=prometheus"])) == direct("k8s:app=prometheus", "source")
    assert len(_answer(["--all", "--from-label", "app in (prometheus, other)"])) == direct("k8s:app=prometheus", "source")
    assert len(_answer(["--all", "--to-label", "reserved:world"])) == direct("reserved:world", "destination")
    assert len(_answer(["--all", "--from-label", "container:app=prometheus"])) == 0
    with pytest.raises(ValueError):
        _answer(["--all", "--label", "app in prometheus"])


def test_dns_query_regex():
    pattern = r"^zipkin\.istio-system\."
    want = [line for line in DNS if re.search(pattern, line["flow"]["l7"]["dns"].get("query", ""))]
    got = _answer(["--all", "--allowlist", json.dumps({"dns_query": [pattern]})], DNS)
    assert want and got == sorted(want, key=flow_time_ns)
    assert not _answer(["--all", "--allowlist", json.dumps({"dns_query": [pattern]})])


def test_pod_without_namespace_means_default():
    req = build_request(["--all", "--from-pod", "prometheus-"], NOW)
    assert not any(matches(req, line) for line in HTTP)  # the pod lives in istio-system
    req = build_request(["--all", "--from-pod", "istio-system/prometheus-"], NOW)
    assert sum(matches(req, line) for line in HTTP) == sum(
        1 for line in HTTP if line["flow"]["source"].get("pod_name", "").startswith("prometheus-"))


def test_number_first_since_until_windows():
    ordered = sorted(HTTP, key=flow_time_ns)
    assert _answer([]) == ordered[-20:]
    assert _answer(["--last", "5"]) == ordered[-5:]
    assert _answer(["--first", "3"]) == ordered[:3]
    since = ordered[100]["flow"]["time"]
    assert _answer(["--since", since, "--last", "10"]) == ordered[100:110]
    assert _answer(["--since", since, "--first", "10"]) == ordered[100:110]
    until = ordered[50]["flow"]["time"]
    assert _answer(["--until", until]) == ordered[:51]
    assert _answer(["--since", since, "--until", ordered[120]["flow"]["time"]]) == ordered[100:121]
    # `now` before the last flows: those are not stored yet
    early = datetime(2021, 10, 4, 14, 0, tzinfo=UTC)
    assert expected_responses(build_request(["--all"], early), HTTP, early) == [
        line for line in ordered if flow_time_ns(line) <= 1633356000 * 10**9]


def test_masked_response_keeps_default_paths_only():
    req = build_request([], NOW)
    resp = masked_response(req, HTTP[0])
    assert resp["time"] == HTTP[0]["time"] and resp["node_name"] == HTTP[0]["node_name"]
    assert set(resp["flow"]["source"]) <= {"identity", "namespace", "pod_name"}
    assert "labels" not in resp["flow"]["source"] and "l7" in resp["flow"]
    assert set(resp["flow"]) <= {p.split(".")[0] for p in DEFAULT_FIELD_MASK}
    assert set(resp["flow"]) <= set(flow_pb2.Flow.DESCRIPTOR.fields_by_name.keys())
