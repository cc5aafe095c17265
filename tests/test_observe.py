"""`flowlog observe`: what it prints for real Hubble captures, as `hubble observe` prints
them, the requests it builds for Hubble's flags, and the command against a gRPC Observer
server on loopback."""

from __future__ import annotations

import _thread
import argparse
import io
import socket
import sys
import threading
import time
from concurrent import futures
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.wrappers_pb2 import Int32Value

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2, observer_pb2_grpc
from ingest.api.relay import relay_pb2
from ingest.history import observe
from ingest.history.printer import Printer

from .certs import CA, write
from .helpers import ALL_FIXTURES, DNS_330, FIXTURES, fixture_lines, responses_of

HTTP_5 = FIXTURES / "basic-sample-5-http-flows.json"
NOW = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=timezone.utc)
NOW_NS = 1795687200_123456000
# hubble/pkg/defaults FieldMask (cilium/cilium v1.19), which `hubble observe` sends for
# compact, dict and table output.
HUBBLE_FIELD_MASK = ["time", "verdict", "ethernet", "IP", "l4", "source.identity", "source.namespace",
                     "source.pod_name", "destination.identity", "destination.namespace", "destination.pod_name", "Type",
                     "node_name", "l7", "event_type", "source_service", "destination_service", "is_reply", "Summary",
                     "ip_trace_id"]


def printed(responses, output="compact", **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(output, out, err, **options)
    for response in responses:
        printer.write(response)
    printer.close()
    return out.getvalue(), err.getvalue()


def lost_events(**fields) -> observer_pb2.GetFlowsResponse:
    response = observer_pb2.GetFlowsResponse(lost_events=flow_pb2.LostEvent(**fields), node_name="node-1")
    response.time.FromNanoseconds(1633357718_735173594)
    return response


# ---- compact, as `hubble observe` prints it


def test_compact_http_request_and_response_with_status_and_latency():
    lines = printed(responses_of(fixture_lines(HTTP_5)))[0].splitlines()
    assert lines[0] == ("Oct  4 14:28:38.735: istio-system/prometheus-6655946b9f-6xcpf:48532 (ID:16781) -> "
                        "10.128.0.4:9990 (world) http-request FORWARDED (HTTP/1.1 GET http://10.128.0.4:9990/metrics)")
    # a reply: the arrow turns and the client stays on the left
    assert lines[3] == ("Oct  4 14:28:40.808: istio-system/prometheus-6655946b9f-6xcpf:57468 (ID:16781) <- "
                        "kube-system/node-local-dns-r99x7:9253 (world) http-response FORWARDED "
                        "(HTTP/1.1 503 999ms (GET http://10.156.1.2:9253/metrics))")
    assert len(lines) == 5


def test_compact_dns_query_and_answer():
    lines = printed(responses_of(fixture_lines(DNS_330)[:6]))[0].splitlines()
    assert lines[0] == ("Oct  4 11:22:26.592: kube-system/node-local-dns-88zrp:59102 (ID:1563) -> "
                        "kube-system/kube-dns-b4f5c58c7-vnx5s:53 (ID:796) dns-request proxy FORWARDED "
                        "(DNS Query istiod-istio-1611.istio-system.svc.istio-system.svc.cluster.local. A)")
    assert lines[5] == ("Oct  4 11:22:26.599: kube-system/node-local-dns-88zrp:59102 (ID:1563) <- "
                        "kube-system/kube-dns-b4f5c58c7-vnx5s:53 (ID:796) dns-response proxy FORWARDED "
                        "(DNS Answer \"10.160.0.203\" TTL: 30 "
                        "(Proxy istiod-istio-1611.istio-system.svc.cluster.local. A))")


def test_compact_l3_l4_flows_without_is_reply_have_no_direction():
    line = printed(responses_of(fixture_lines(FIXTURES / "basic-sample-10-flows.json")[:1]))[0]
    assert line == ("Jun 16 16:52:13.136: bookinfo/reviews-v1-545db77b95-s6jb8:15020 (ID:25339) <> 10.0.2.1:42044 "
                    "(host) to-stack FORWARDED (TCP Flags: ACK, FIN)\n")


def test_compact_lost_events():
    plain = lost_events(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=3, cpu=Int32Value(value=1))
    windowed = lost_events(source=flow_pb2.PERF_EVENT_RING_BUFFER, num_events_lost=12)
    windowed.lost_events.first.FromNanoseconds(1633357700_000000000)
    windowed.lost_events.last.FromNanoseconds(1633357718_000000000)
    assert printed([plain, windowed])[0].splitlines() == [
        "Oct  4 14:28:38.735 EVENTS LOST: HUBBLE_RING_BUFFER CPU(1) 3",
        "Oct  4 14:28:38.735 EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(0) 12 "
        "(first: Oct  4 14:28:20.000, last: Oct  4 14:28:38.000)"]


def test_node_status_goes_to_stderr_and_only_problems_without_debug():
    def status(state, names, message=""):
        response = observer_pb2.GetFlowsResponse(node_name="relay", node_status=relay_pb2.NodeStatusEvent(
            state_change=state, node_names=names, message=message))
        response.time.FromNanoseconds(1633357718_735173594)
        return response

    events = [status(relay_pb2.NODE_CONNECTED, ["a", "b"]), status(relay_pb2.NODE_UNAVAILABLE, ["c"]),
              status(relay_pb2.NODE_ERROR, ["d"], "connection refused")]
    out, err = printed(events)
    assert out == ""
    assert err.splitlines() == ["Oct  4 14:28:38.735 [relay]: 1 nodes are unavailable: c",
                                'Oct  4 14:28:38.735 [relay]: Error "connection refused" on 1 nodes: d']
    assert printed(events, debug=True)[1].splitlines()[0] == (
        "Oct  4 14:28:38.735 [relay]: Receiving flows from 2 nodes: a, b")


def test_times_are_utc_as_hubble_prints_them_unless_another_zone_is_asked_for():
    first = responses_of(fixture_lines(HTTP_5)[:1])
    assert printed(first)[0].startswith("Oct  4 14:28:38.735: ")
    assert printed(first, tz=timezone(timedelta(hours=-15)))[0].startswith("Oct  3 23:28:38.735: ")


def test_terminal_escapes_in_a_flow_are_defused():
    response = responses_of(fixture_lines(HTTP_5)[:1])[0]
    response.flow.Summary = "GET /\x1b[2J\rx"
    assert printed([response])[0].endswith("(GET /^[[2J\\rx)\n")


# ---- jsonpb and json


def test_jsonpb_is_hubbles_own_line_for_every_capture():
    for path in ALL_FIXTURES:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        out = printed(responses_of(fixture_lines(path)), "jsonpb")[0]
        assert out.splitlines() == lines, path.name


def test_jsonpb_round_trips_and_json_is_its_alias():
    responses = responses_of(fixture_lines(HTTP_5)) + [lost_events(num_events_lost=2)]
    responses[0].flow.l7.http.url = "http://web/?a=1&b=<2>"
    out = printed(responses, "jsonpb")[0]
    assert "a=1\\u0026b=\\u003c2\\u003e" in out  # escaped as Go's json.Encoder does
    assert [json_format.Parse(line, observer_pb2.GetFlowsResponse()) for line in out.splitlines()] == responses
    assert printed(responses, "json")[0] == out


# ---- table and dict


def test_table_has_hubbles_header_and_aligned_columns():
    responses = responses_of(fixture_lines(HTTP_5)) + [lost_events(num_events_lost=7)]
    lines = printed(responses, "table")[0].splitlines()
    # each column as wide as its widest cell plus 3 (Hubble's tabwriter); the summary is not padded
    assert lines[0] == ("TIMESTAMP             SOURCE                                           DESTINATION"
                        "                                      TYPE            VERDICT     SUMMARY")
    assert lines[1] == ("Oct  4 14:28:38.735   istio-system/prometheus-6655946b9f-6xcpf:48532   10.128.0.4:9990"
                        "                                  http-request    FORWARDED   "
                        "HTTP/1.1 GET http://10.128.0.4:9990/metrics")
    assert lines[4] == ("Oct  4 14:28:40.808   kube-system/node-local-dns-r99x7:9253            "
                        "istio-system/prometheus-6655946b9f-6xcpf:57468   http-response   FORWARDED   "
                        "HTTP/1.1 503 999ms (GET http://10.156.1.2:9253/metrics)")
    assert lines[6] == ("Oct  4 14:28:38.735   UNKNOWN_LOST_EVENT_SOURCE                        -"
                        "                                                EVENTS LOST     -           CPU(0) - 7")
    assert len(lines) == 7


def test_table_prints_nothing_until_closed():
    out = io.StringIO()
    printer = Printer("table", out)
    printer.write(responses_of(fixture_lines(HTTP_5)[:1])[0])
    assert out.getvalue() == ""
    printer.close()
    assert out.getvalue().startswith("TIMESTAMP")


def test_dict_separates_flows():
    out = printed(responses_of(fixture_lines(HTTP_5)[:2]), "dict")[0]
    assert out.split("------------\n")[0] == (
        "  TIMESTAMP: Oct  4 14:28:38.735\n     SOURCE: istio-system/prometheus-6655946b9f-6xcpf:48532\n"
        "DESTINATION: 10.128.0.4:9990\n       TYPE: http-request\n    VERDICT: FORWARDED\n"
        "    SUMMARY: HTTP/1.1 GET http://10.128.0.4:9990/metrics\n")
    assert out.count("------------\n") == 1


# ---- the requests, as `hubble observe` builds them


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flowlog observe", exit_on_error=False)
    observe.add_arguments(parser)
    return parser.parse_args(list(argv))


def request(*argv: str) -> observer_pb2.GetFlowsRequest:
    return observe.build_request(parse(*argv), NOW)


def filters(*dicts: dict) -> list[flow_pb2.FlowFilter]:
    return [json_format.ParseDict(d, flow_pb2.FlowFilter()) for d in dicts]


def test_plain_observe_asks_for_the_last_20_with_hubbles_field_mask():
    sent = request()
    assert (sent.number, sent.follow, sent.first) == (20, False, False)
    assert not sent.whitelist and not sent.blacklist
    assert not sent.HasField("since") and not sent.HasField("until")
    assert list(sent.field_mask.paths) == HUBBLE_FIELD_MASK
    assert list(request("-o", "table").field_mask.paths) == HUBBLE_FIELD_MASK
    assert list(request("-o", "dict").field_mask.paths) == HUBBLE_FIELD_MASK
    assert not request("-o", "jsonpb").HasField("field_mask")
    assert not request("-o", "json").HasField("field_mask")


def test_namespace_is_two_filters_ored_each_with_the_other_flags():
    sent = request("-n", "kube-system", "-t", "l7", "--http-method", "GET", "--http-method", "POST")
    assert list(sent.whitelist) == filters(
        {"source_pod": ["kube-system/"], "event_type": [{"type": 129}], "http_method": ["GET", "POST"]},
        {"destination_pod": ["kube-system/"], "event_type": [{"type": 129}], "http_method": ["GET", "POST"]})


def test_from_and_to_flags_make_one_filter():
    sent = request("--from-namespace", "a", "--to-namespace", "b", "--to-port", "80", "--verdict", "DROPPED",
                   "--from-label", "app=web")
    assert list(sent.whitelist) == filters({
        "source_pod": ["a/"], "destination_pod": ["b/"], "destination_port": ["80"], "verdict": ["DROPPED"],
        "source_label": ["app=web"]})
    sent = request("--from-ip", "10.0.0.1", "--to-fqdn", "*.cilium.io")
    assert list(sent.whitelist) == filters({"source_ip": ["10.0.0.1"], "destination_fqdn": ["*.cilium.io"]})


def test_either_side_flags_and_pods_in_a_namespace():
    sent = request("-n", "default", "--label", "app=a", "--port", "53")
    assert list(sent.whitelist) == filters(
        {"source_pod": ["default/"], "source_label": ["app=a"], "source_port": ["53"]},
        {"destination_pod": ["default/"], "destination_label": ["app=a"], "destination_port": ["53"]})
    sent = request("--ip", "10.0.0.0/8")
    assert list(sent.whitelist) == filters({"source_ip": ["10.0.0.0/8"]}, {"destination_ip": ["10.0.0.0/8"]})
    sent = request("-n", "shop", "--pod", "cart", "--pod", "shop/web")
    assert list(sent.whitelist) == filters({"source_pod": ["shop/cart", "shop/web"]},
                                           {"destination_pod": ["shop/cart", "shop/web"]})


def test_not_puts_the_next_filter_in_the_blacklist():
    sent = request("--not", "--http-status", "2+", "--to-pod", "default/web", "--not", "--dns-query", r".*\.local\.")
    assert list(sent.whitelist) == filters({"destination_pod": ["default/web"]})
    assert list(sent.blacklist) == filters({"http_status_code": ["2+"], "dns_query": [r".*\.local\."]})
    sent = request("--not", "--namespace", "kube-system")
    assert not sent.whitelist
    assert list(sent.blacklist) == filters({"source_pod": ["kube-system/"]}, {"destination_pod": ["kube-system/"]})


def test_value_flags_as_hubble_parses_them():
    sent = request("-t", "trace:to-stack", "-t", "drop", "--identity", "world", "--identity", "0x10",
                   "--traffic-direction", "Ingress", "--uuid", "u-1", "--node-name", "k8s*", "--protocol", "tcp",
                   "--http-path", "/api/.*", "--http-url", "http://a/.*", "--to-ip", "10.0.0.1")
    common = {"event_type": [{"type": 4, "match_sub_type": True, "sub_type": 3}, {"type": 1}],
              "traffic_direction": ["INGRESS"], "uuid": ["u-1"], "node_name": ["k8s*"], "protocol": ["tcp"],
              "http_path": ["/api/.*"], "http_url": ["http://a/.*"], "destination_ip": ["10.0.0.1"]}
    assert list(sent.whitelist) == filters({"source_identity": [2, 16], **common},
                                           {"destination_identity": [2, 16], **common})
    assert list(request("--to-identity", "kube-apiserver").whitelist) == filters({"destination_identity": [7]})
    assert list(request("-t", "4:3").whitelist) == filters({"event_type": [{"type": 4, "match_sub_type": True,
                                                                             "sub_type": 3}]})


def test_number_and_time_range():
    assert request("--all").number == 2**64 - 1
    assert request("--last", "5").number == 5
    assert (request("-f").number, request("-f").follow) == (0, True)
    assert request("--all", "-f").number == 2**64 - 1
    first = request("--first", "7")
    assert (first.number, first.first) == (7, True)

    ranged = request("--since", "2h", "--until", "1h30m")
    assert ranged.since.ToNanoseconds() == NOW_NS - 2 * 3600 * 10**9
    assert ranged.until.ToNanoseconds() == NOW_NS - 90 * 60 * 10**9
    assert ranged.number == 0  # the range alone bounds it
    assert request("--since", "2021-10-04T14:28:38.735173594Z").since.ToNanoseconds() == 1633357718_735173594
    assert request("--since", "2021-10-04T16:28+02:00").since.ToNanoseconds() == 1633357680 * 10**9
    assert request("--since", "2021-10-04").since.ToNanoseconds() == 1633305600 * 10**9
    assert request("--since", "Mon, 04 Oct 2021 14:28:38 +0000").since.ToNanoseconds() == 1633357718 * 10**9
    assert request("--since", "1h", "--last", "3").number == 3

    followed = request("--since", "10m", "--until", "5m", "-f")
    assert followed.HasField("since") and not followed.HasField("until")


@pytest.mark.parametrize("argv, message", [
    (("--first", "1", "--last", "2"), "cannot set both --first and --last"),
    (("--first", "1", "--all"), "cannot set both --first and --all"),
    (("--first", "1", "-f"), "cannot set both --first and --follow"),
    (("--last", "1", "--all"), "cannot set both --last and --all"),
    (("-o", "table", "-f"), "table output format is not compatible with follow mode"),
    (("--ip", "1.1.1.1", "--from-ip", "2.2.2.2"), "filters --from-ip and --ip cannot be combined"),
    (("-n", "a", "--to-pod", "a/b"), "filters --to-pod and --namespace cannot be combined"),
    (("--to-namespace", "a", "--to-fqdn", "x."), "filters --to-fqdn and --to-namespace cannot be combined"),
    (("--identity", "1", "--from-identity", "2"), "filters --identity and --from-identity cannot be combined"),
    (("-n", "a", "--pod", "b/web"), 'namespace conflict: "a" does not contain "b/web"'),
    (("--http-method", "GET", "--not"), "trailing --not found in the arguments"),
    (("--not", "--not", "--ip", "1.1.1.1"), "consecutive --not statements"),
    (("--verdict", "forwarded"), "invalid --verdict value: forwarded"),
    (("--traffic-direction", "up"), "up: invalid traffic direction, expected ingress or egress"),
    (("-t", "nope"), "unable to parse type 'nope'"),
    (("--identity", "nobody"), "invalid security identity"),
    (("--since", "yesterday"), "failed to parse the since time: failed to convert yesterday to time"),
])
def test_flags_hubble_refuses(argv, message):
    with pytest.raises(observe.ObserveError, match="^" + message.replace("+", r"\+").replace("*", r"\*")):
        request(*argv)


def test_a_blacklist_may_repeat_what_the_whitelist_has():
    sent = request("--ip", "1.1.1.1", "--not", "--from-ip", "1.1.1.2")
    assert list(sent.blacklist) == filters({"source_ip": ["1.1.1.2"]})


# ---- the command against a gRPC Observer on loopback


class Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self, responses, abort=None):
        self.responses, self.abort, self.requests = responses, abort, []

    def GetFlows(self, request, context):
        self.requests.append(request)
        if self.abort:
            context.abort(*self.abort)
        yield from self.responses


@pytest.fixture
def serve():
    servers = []

    def start(servicer, credentials=None) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        observer_pb2_grpc.add_ObserverServicer_to_server(servicer, server)
        port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
                else server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def test_run_over_mtls_as_to_hubble_relay(serve, capsys, tmp_path):
    ca = CA("hubble-ca")
    server_cert, server_key = ca.issue("relay", ["ui.hubble-relay.cilium.io"], client=False)
    client_cert, client_key = ca.issue("flowlog", ["flowlog"], client=True)
    files = write(tmp_path, ca=ca.pem, cert=client_cert, key=client_key)
    credentials = grpc.ssl_server_credentials([(server_key, server_cert)], root_certificates=ca.pem,
                                              require_client_auth=True)
    responses = responses_of(fixture_lines(HTTP_5)[:1])
    address = serve(Observer(responses), credentials)
    tls = ("--tls-ca-cert-files", files["ca"], "--tls-server-name", "ui.hubble-relay.cilium.io")
    assert observe.run(parse("--server", f"tls://{address}", *tls, "--tls-client-cert-file", files["cert"],
                             "--tls-client-key-file", files["key"])) == 0
    assert capsys.readouterr().out == printed(responses)[0]
    # without a client certificate the server refuses the handshake
    assert observe.run(parse("--server", address, "--tls", *tls)) == 1
    assert capsys.readouterr().err.startswith(f"flowlog observe: {address}: UNAVAILABLE: ")


def test_run_prints_the_stream_and_sends_build_requests_request(serve, capsys):
    responses = responses_of(fixture_lines(HTTP_5)) + [lost_events(num_events_lost=1)]
    observer = Observer(responses)
    args = parse("--server", serve(observer), "-n", "istio-system", "--not", "--http-status", "2+",
                 "--since", "2021-10-04", "--last", "10")
    assert observe.run(args) == 0
    out, err = capsys.readouterr()
    assert out == printed(responses)[0]
    assert out.splitlines()[0].startswith("Oct  4 14:28:38.735: istio-system/prometheus-6655946b9f-6xcpf:48532 ")
    assert err == ""
    assert observer.requests == [observe.build_request(args, datetime.now(timezone.utc))]


def test_run_jsonpb(serve, capsys):
    observer = Observer(responses_of(fixture_lines(DNS_330)[:3]))
    assert observe.run(parse("--server", serve(observer), "-o", "jsonpb", "--first", "3")) == 0
    assert capsys.readouterr().out.splitlines() == DNS_330.read_text().splitlines()[:3]
    assert (observer.requests[0].first, observer.requests[0].number) == (True, 3)


def test_a_grpc_error_is_one_line_and_exit_1(serve, capsys):
    observer = Observer([], abort=(grpc.StatusCode.INVALID_ARGUMENT, 'unknown field mask path "IP"'))
    address = serve(observer)
    assert observe.run(parse("--server", address)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f'flowlog observe: {address}: INVALID_ARGUMENT: unknown field mask path "IP"\n'


def test_no_server_is_one_line_and_exit_1(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % probe.getsockname()[1]
    assert observe.run(parse("--server", address)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"flowlog observe: {address}: UNAVAILABLE: ") and err.count("\n") == 1


def test_flags_that_do_not_go_together_exit_2(capsys):
    assert observe.run(parse("--first", "1", "--follow")) == 2
    assert capsys.readouterr().err == "flowlog observe: cannot set both --first and --follow\n"


def test_a_closed_stdout_ends_quietly_with_141(serve, monkeypatch):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    assert observe.run(parse("--server", serve(Observer(responses_of(fixture_lines(HTTP_5)))))) == 141


def test_ctrl_c_ends_quietly_with_130_after_what_came(serve, capsys):
    sent, release = threading.Event(), threading.Event()

    class Following(Observer):
        def GetFlows(self, request, context):
            yield from self.responses
            sent.set()
            release.wait(60)  # the stream stays open until the test ends

    responses = responses_of(fixture_lines(HTTP_5)[:2])
    out_stream = sys.stdout  # capsys's

    def interrupt():
        # Once the client has printed what was sent: under load that takes a while.
        sent.wait(60)
        deadline = time.monotonic() + 60
        while printed(responses)[0] not in out_stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        assert observe.run(parse("--server", serve(Following(responses)), "-f")) == 130
    finally:
        release.set()
    out, err = capsys.readouterr()
    assert (out, err) == (printed(responses)[0], "")
