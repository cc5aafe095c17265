"""What the stored rows must hold, computed straight from the fixture JSON.

Independent of ingest.decode on purpose: these read the proto3 JSON by hand.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time with 0-9 fraction digits."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def _port(flow: dict, key: str) -> int:
    l4 = flow.get("l4", {})
    for proto in ("TCP", "UDP", "SCTP"):
        if proto in l4:
            return int(l4[proto].get(key, 0))
    return 0


def common(flow: dict) -> dict:
    src, dst = flow.get("source", {}), flow.get("destination", {})
    return {
        "time": rfc3339_ns(flow["time"]),
        "node": flow["node_name"],
        "verdict": flow["verdict"],
        "l7_type": flow["l7"]["type"],
        "traffic_direction": flow.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN"),
        "is_reply": flow.get("is_reply"),
        "src_namespace": src.get("namespace", ""), "src_pod": src.get("pod_name", ""),
        "src_identity": src.get("identity", 0), "src_ip": flow["IP"]["source"],
        "src_port": _port(flow, "source_port"), "src_labels": src.get("labels", []),
        "dst_namespace": dst.get("namespace", ""), "dst_pod": dst.get("pod_name", ""),
        "dst_identity": dst.get("identity", 0), "dst_ip": flow["IP"]["destination"],
        "dst_port": _port(flow, "destination_port"), "dst_labels": dst.get("labels", []),
    }


def http_row(flow: dict) -> dict:
    http = flow["l7"]["http"]
    row = common(flow)
    url = http.get("url", "")
    row.update(method=http.get("method", ""), url=url, path=urlsplit(url).path, query=urlsplit(url).query,
               protocol=http.get("protocol", ""), status_code=int(http.get("code", 0)),
               latency_ns=int(flow["l7"].get("latency_ns", 0)))
    return row


def dns_row(flow: dict) -> dict:
    dns = flow["l7"]["dns"]
    row = common(flow)
    row.update(query=dns.get("query", ""), qtypes=dns.get("qtypes", []), rcode=int(dns.get("rcode", 0)),
               ips=dns.get("ips", []), ttl=int(dns.get("ttl", 0)), rrtypes=dns.get("rrtypes", []),
               cnames=dns.get("cnames", []), observation_source=dns.get("observation_source", ""))
    return row


def expected_rows(lines: list[dict]) -> tuple[list[dict], list[dict]]:
    """(http rows, dns rows) in time order for the L7 flows among the lines."""
    http, dns = [], []
    for line in lines:
        flow = line.get("flow")
        if not flow or "l7" not in flow:
            continue
        if "http" in flow["l7"]:
            http.append(http_row(flow))
        elif "dns" in flow["l7"]:
            dns.append(dns_row(flow))
    return sorted(http, key=lambda r: r["time"]), sorted(dns, key=lambda r: r["time"])


def stored_rows(client, database: str, table: str, columns: list[str]) -> list[dict]:
    """Rows as dicts, time as integer nanoseconds, ordered by time."""
    select = ", ".join("toUnixTimestamp64Nano(time) AS time" if c == "time" else f"`{c}`" for c in columns)
    result = client.query(f"SELECT {select} FROM `{database}`.`{table}` ORDER BY time, flow_id")
    return [dict(zip(columns, row)) for row in result.result_rows]
