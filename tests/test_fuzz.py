"""Fuzzing the two decode paths: whatever arrives, the decoder answers with rows or a
DecodeError naming what is wrong, never another exception and never a hang; and the
good lines around bad ones are all stored."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.api.observer import observer_pb2
from ingest.decode.decoder import Decoder
from ingest.pipeline.records import DecodeError
from ingest.runner import replay
from ingest.sources.files import parse_line

from .helpers import DNS_330, HTTP_348, fixture_lines

GOOD = [json.dumps(line).encode() for line in fixture_lines(HTTP_348)[:40] + fixture_lines(DNS_330)[:40]]
decoder = Decoder()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


def mutate(data, rng: random.Random, value):
    """Replace one value somewhere inside a fixture line's JSON."""
    if isinstance(data, dict) and data:
        key = rng.choice(sorted(data))
        if rng.random() < 0.5 or not isinstance(data[key], (dict, list)):
            data[key] = value
        else:
            mutate(data[key], rng, value)
    elif isinstance(data, list) and data:
        index = rng.randrange(len(data))
        data[index] = value if rng.random() < 0.5 else mutate(data[index], rng, value)
    return data


def decode_line(line: bytes) -> None:
    try:
        decoder.decode(parse_line(line))
    except DecodeError:
        pass


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_json_path(line):
    decode_line(line)


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.randoms(use_true_random=False), json_values)
def test_mutated_fixture_lines_never_crash_the_json_path(index, rng, value):
    decode_line(json.dumps(mutate(json.loads(GOOD[index]), rng, value)).encode())


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.binary(max_size=64), st.integers(0, 10_000))
def test_corrupted_protobuf_never_crashes_the_grpc_path(index, noise, at):
    wire = bytearray(parse_line(GOOD[index]).SerializeToString())
    at %= len(wire)
    wire[at:at + len(noise)] = noise
    try:
        response = observer_pb2.GetFlowsResponse.FromString(bytes(wire))
    except Exception:  # grpc drops a message that does not parse before it reaches us
        return
    try:
        decoder.decode(response)
    except DecodeError:
        pass


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_every_good_line_after_a_bad_one_is_stored(config, client, tmp_path, bad_lines, rng):
    lines = list(GOOD)
    for bad in bad_lines:
        lines.insert(rng.randrange(len(lines) + 1), bad.replace(b"\n", b" "))
    path = tmp_path / f"fuzz-{rng.random()}.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    replay(config, client, [str(path)])
    stored = client.query(f"SELECT count() FROM `{config.store.database}`.l7_audit").result_rows[0][0]
    assert stored == len(GOOD)


def _number_and_time_leaves(data, path=()):
    """Paths to the numbers (JSON numbers, or 64-bit ones as strings) and times in a line."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _number_and_time_leaves(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _number_and_time_leaves(value, path + (index,))
    elif isinstance(data, int) and not isinstance(data, bool) or isinstance(data, str) and data.isdigit():
        yield path, "number"
    elif isinstance(data, str) and path and path[-1] in ("time", "first", "last"):
        yield path, "time"


EXTREME_NUMBERS = [0, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**53, 2**63 - 1, 2**64 - 1, -1, -2**31]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 10_000), st.sampled_from(EXTREME_NUMBERS),
                          st.integers(1, 9999)), min_size=1, max_size=4))
def test_numbers_and_times_at_their_limits_are_stored_or_dead_lettered_never_refused(config, client, tmp_path,
                                                                                    newest_committed_restored,
                                                                                    mutations):
    """Any value Hubble's types allow either fits its column or is dead-lettered: the store's
    client never refuses a batch (which sets the whole batch aside). Times up to 2106 are
    stored: the ingest-lag gauge is put back for the tests after it."""
    lines = [json.loads(line) for line in GOOD]
    for index, pick, number, year in mutations:
        leaves = list(_number_and_time_leaves(lines[index]))
        path, kind = leaves[pick % len(leaves)]
        target = lines[index]
        for key in path[:-1]:
            target = target[key]
        if kind == "time":
            target[path[-1]] = f"{year:04d}-12-31T23:59:59.999999999Z"
        else:
            target[path[-1]] = str(number) if isinstance(target[path[-1]], str) else number
    path = tmp_path / f"limits-{len(list(tmp_path.iterdir()))}.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = replay(config, client, [str(path)])
    db = config.store.database
    set_aside = client.query(f"SELECT count() FROM `{db}`.ingest_gaps WHERE kind = 'spool_unreadable'").result_rows
    assert set_aside == [(0,)]
    counts = summary.counts
    assert counts.l7_flows + counts.filtered + counts.gaps + counts.bad_lines == counts.lines == len(lines)


def parsed_by_json_format(data) -> bytes | str:
    from google.protobuf import json_format
    try:
        return json_format.ParseDict(data, observer_pb2.GetFlowsResponse()).SerializeToString(deterministic=True)
    except json_format.ParseError as err:
        return f"error: {err}"


def parsed_by_jsonpb(data) -> bytes | str:
    from google.protobuf import json_format
    from ingest.sources import jsonpb
    try:
        return jsonpb.parse(data, observer_pb2.GetFlowsResponse).SerializeToString(deterministic=True)
    except json_format.ParseError as err:
        return f"error: {err}"


def test_the_fast_json_route_builds_the_same_messages_as_json_format_on_every_fixture():
    from .helpers import ALL_FIXTURES
    for path in ALL_FIXTURES:
        for line in fixture_lines(path):
            assert parsed_by_jsonpb(line) == parsed_by_json_format(line)


@settings(max_examples=600, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.randoms(use_true_random=False), json_values)
def test_the_fast_json_route_agrees_with_json_format_on_mutated_input(index, rng, value):
    data = mutate(json.loads(GOOD[index]), rng, value)
    assert parsed_by_jsonpb(json.loads(json.dumps(data))) == parsed_by_json_format(json.loads(json.dumps(data)))


url_parts = st.text(alphabet="ab:/?#@%.[]0 \t", max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["http://", "https://u:p@", "", "//"]), url_parts, url_parts, st.booleans())
def test_url_split_matches_urlsplit(scheme, host_and_path, query, strip_userinfo):
    """The decoder splits a URL's head once and appends varying query strings; the result
    is what urlsplit/urlunsplit give for the whole URL."""
    from urllib.parse import urlsplit, urlunsplit

    from ingest.config import HTTPConfig

    url = f"{scheme}{host_and_path}?{query}"
    fast = Decoder(HTTPConfig(strip_userinfo=strip_userinfo))
    try:
        fast._url(url.partition("?")[0])  # the head is known, as after its first flow
    except DecodeError:
        pass
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        try:
            fast._url(url)
        except DecodeError:
            return
        raise AssertionError(f"{url!r}: urlsplit refuses it, the decoder took it")
    if strip_userinfo and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    assert fast._url(url) == (urlunsplit(parts), host), url


_PCHAR = "abcXYZ019-._~!$&'()*+,;=:@%"
_segment = st.text(alphabet=_PCHAR, max_size=8)
absolute_urls = st.builds(
    lambda scheme, userinfo, host, port, segments, query: (
        f"{scheme}://{userinfo}{host}{port}{''.join('/' + s for s in segments)}{query}"),
    st.sampled_from(["http", "https"]), st.sampled_from(["", "user:pw@"]),
    st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True),
    st.sampled_from(["", ":80", ":8080", ":65535"]), st.lists(_segment, min_size=1, max_size=4),
    st.one_of(st.just(""), st.text(alphabet=_PCHAR + "/?", max_size=16).map(lambda q: "?" + q)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(absolute_urls, min_size=1, max_size=60))
def test_clickhouse_computes_path_and_query_of_an_absolute_url_as_urlsplit_splits_it(client, urls):
    """http_flows stores the URL and ClickHouse computes path and query from it when read.
    For the absolute URLs Hubble reports (Envoy builds them from :scheme, :authority and
    :path, which starts with a slash), they are what urlsplit gives, as when the decoder
    stored them itself."""
    from urllib.parse import urlsplit

    from ingest.store.schema import HTTP_FLOWS

    alias = {c.name: c.alias for c in HTTP_FLOWS.columns if c.alias}
    decoder = Decoder()
    stored = [decoder._url(url)[0] for url in urls]
    computed = client.query(f"SELECT {alias['path']}, {alias['query']} FROM (SELECT arrayJoin({{urls:Array(String)}}) "
                            "AS url)", parameters={"urls": stored}).result_rows
    assert computed == [(urlsplit(url).path, urlsplit(url).query) for url in urls]


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 13), st.integers(0, 32), st.sampled_from(["T", "T", "T", "t", " "]),
       st.integers(0, 24), st.integers(0, 60), st.integers(0, 99), st.sampled_from(["", ".", ".0", ".5"]),
       st.text(alphabet="0123456789", max_size=11), st.sampled_from(["Z", "Z", "Z", "z", "+01:00", "-00:30", ""]))
def test_rfc3339_times_split_by_the_fast_route_as_timestamp_parses_them(year, month, day, t, hour, minute, second,
                                                                          dot, fraction, zone):
    """The JSON route reads Hubble's times without strptime; any text it takes must give
    what Timestamp.FromJsonString gives, and what that refuses, it must not take."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from ingest.sources import jsonpb

    text = f"{year:04d}-{month:02d}-{day:02d}{t}{hour:02d}:{minute:02d}:{second:02d}{dot}{fraction if dot else ''}{zone}"
    expected = Timestamp()
    try:
        expected.FromJsonString(text)
    except ValueError:
        expected = None
    try:
        got = jsonpb._timestamp(text)
    except jsonpb._Doubt:
        got = None
    if isinstance(got, dict):
        got = Timestamp(**got)
    assert got == expected, text


# Where a newer Cilium might add a field, and the enums it might extend.
_NESTED = (("flow",), ("flow", "l7"), ("flow", "source"), ("flow", "destination"), ("flow", "l4"))
_ENUMS = (("flow", "verdict"), ("flow", "traffic_direction"), ("flow", "l7", "type"), ("flow", "Type"))


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.lists(st.tuples(st.sampled_from(_NESTED), st.from_regex(r"zz_[a-z_]{1,8}",
                                                                                                  fullmatch=True),
                                                           json_values), max_size=4),
       st.lists(st.tuples(st.sampled_from(_ENUMS), st.integers(3, 2**31 - 1)), max_size=3))
def test_a_flow_of_a_newer_cilium_is_kept_whatever_it_adds(index, fields, enums):
    """Fields this build does not know, anywhere in a flow, and enum numbers it does not
    know: the flow is still decoded into rows, and each unknown field is named."""
    data = json.loads(GOOD[index])
    added = set()
    for path, key, value in fields:
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
        added.add(".".join(path + (key,)))
    for path, number in enums:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = number
    unknown: list[str] = []
    rows = decoder.decode(parse_line(json.dumps(data).encode(), unknown))
    assert rows.audit_row and set(unknown) == added
