"""The results table: one row per number, with the issue's target beside it, and the value
of an earlier run when one is given to compare with."""

from __future__ import annotations

import math

# (path in the results, label, format, target text, check against the target or None)
ROWS = (
    ("limit.messages_per_s", "raw receive limit (Python client, no decoding)", "{:,.0f} msg/s", "", None),
    ("limit.mb_per_s", "  the same in bytes", "{:,.1f} MB/s", "", None),
    ("limit.spread", "  slowest and fastest run", "{}", "", None),
    ("limit.us_per_message", "  its CPU a message", "{:.1f} µs", "", None),
    ("limit.compiled.messages_per_s", "the same, C++ client (grpc++, bench/receive_floor.cc)", "{:,.0f} msg/s", "",
     None),
    ("limit.compiled.us_per_message", "  its CPU a message: the floor on gRPC's C core", "{:.1f} µs", "", None),
    ("limit.compiled.system_us_per_message", "    of it in the kernel", "{:.1f} µs", "", None),
    ("node.flows_per_s", "a node: flowlog run, the store in another process", "{:,.0f} flows/s", "", None),
    ("node.ratio_to_limit", "  ratio to the limit", "{:.2f}", ">= 0.60", lambda v: v >= 0.6),
    ("node.us_per_flow", "  the ingester's CPU a flow", "{:.1f} µs", "<= 20 µs", lambda v: v <= 20),
    ("node.peak_rss_mb", "  its peak RSS (VmHWM)", "{:,.0f} MB", "", None),
    ("node.store_cpu_s", "  the store's CPU seconds (not the node's)", "{:.1f} s", "", None),
    ("node.alone.flows_per_s", "  the store elsewhere: inserts answered, not stored", "{:,.0f} flows/s", "", None),
    ("node.alone.ratio_to_limit", "    ratio to the limit", "{:.2f}", ">= 0.60", lambda v: v >= 0.6),
    ("node.alone.us_per_flow", "    the ingester's CPU a flow", "{:.1f} µs", "<= 20 µs", lambda v: v <= 20),
    ("node.alone.peak_rss_mb", "    its peak RSS (VmHWM)", "{:,.0f} MB", "", None),
    ("node.rates.1000.cores_busy", "  at 1,000 flows/s: cores busy", "{:.2f}", "", None),
    ("node.rates.1000.receive.cores_busy", "    of them gRPC's receive alone (bench.limit)", "{:.2f}", "", None),
    ("node.rates.1000.receive.compiled.cores_busy", "    the C++ client's receive alone", "{:.2f}", "", None),
    ("node.rates.1000.peak_rss_mb", "    peak RSS", "{:,.0f} MB", "", None),
    ("node.rates.10000.cores_busy", "  at 10,000 flows/s: cores busy", "{:.2f}", "", None),
    ("node.rates.10000.receive.cores_busy", "    of them gRPC's receive alone (bench.limit)", "{:.2f}", "", None),
    ("node.rates.10000.receive.compiled.cores_busy", "    the C++ client's receive alone", "{:.2f}", "", None),
    ("node.rates.10000.peak_rss_mb", "    peak RSS", "{:,.0f} MB", "", None),
    ("node.rates.10000.p99_s", "    lag p99", "{:.2f} s", "<= 2 s", lambda v: v <= 2),
    ("node.rates.30000.cores_busy", "  at 30,000 flows/s: cores busy", "{:.2f}", "", None),
    ("node.rates.30000.receive.cores_busy", "    of them gRPC's receive alone (bench.limit)", "{:.2f}", "", None),
    ("node.rates.30000.receive.compiled.cores_busy", "    the C++ client's receive alone", "{:.2f}", "", None),
    ("node.rates.30000.peak_rss_mb", "    peak RSS", "{:,.0f} MB", "<= 150 MB", lambda v: v <= 150),
    ("node.rates.30000.p99_s", "    lag p99", "{:.2f} s", "", None),
    ("node.outage.peak_rss_mb", "  peak RSS, the store stopped then back (most it holds)", "{:,.0f} MB", "", None),
    ("e2e.flows_per_s", "end to end: first flow sent to last row committed", "{:,.0f} flows/s", "", None),
    ("e2e.runs_flows_per_s", "  every run (with --e2e-runs)", "{:,.0f}", "", None),
    ("e2e.ratio_to_limit", "  ratio to the limit", "{:.2f}", ">= 0.30", lambda v: v >= 0.3),
    ("e2e.cpu_s_per_1000_flows", "  CPU seconds per 1,000 flows", "{:.3f} s", "", None),
    ("e2e.cores_busy", "  cores busy (ingester incl. embedded ClickHouse)", "{:.2f}", "", None),
    ("e2e.peak_rss_mb", "  peak RSS of the ingester (VmHWM)", "{:,.0f} MB", "<= 200 MB", lambda v: v <= 200),
    ("e2e.anon_rss_max_sampled_mb", "    its own memory (RssAnon, highest sample)", "{:,.0f} MB", "", None),
    ("rerun.flows_per_s", "re-read: the same flows again, every one found stored", "{:,.0f} flows/s", "", None),
    ("rerun.ratio_to_e2e", "  ratio to end to end", "{:.2f}", "", None),
    ("rerun.cpu_s_per_1000_flows", "  CPU seconds per 1,000 flows", "{:.3f} s", "", None),
    ("protobuf_baseline.flows_per_s", "ClickHouse INSERT ... FORMAT Protobuf, same messages", "{:,.0f} flows/s", "",
     None),
    ("protobuf_baseline.cpu_s", "  its CPU seconds (no audit table, no Python)", "{:.2f} s", "", None),
    ("e2e.ratio_to_protobuf_baseline", "  ratio end to end / ClickHouse", "{:.2f}", "", None),
    ("lag.p50_s", "ingest lag p50 at the fixed load", "{:.2f} s", "", None),
    ("lag.loadgen_max_behind_ms", "  sender held back by flow control, at most", "{:,.0f} ms", "", None),
    ("lag.p99_s", "ingest lag p99 at the fixed load", "{:.2f} s", "<= 2 s", lambda v: v <= 2),
    ("lag.cpu_s_per_1000_flows", "  CPU seconds per 1,000 flows at that load", "{:.3f} s", "", None),
    ("lag.peak_rss_mb", "  peak RSS at that load", "{:,.0f} MB", "", None),
    ("disk.tables.http_flows.bytes_per_row", "bytes per flow on disk: http_flows", "{:.1f} B", "<= 60 B",
     lambda v: v <= 60),
    ("disk.tables.dns_flows.bytes_per_row", "bytes per flow on disk: dns_flows", "{:.1f} B", "<= 60 B",
     lambda v: v <= 60),
    ("disk.tables.l7_audit.bytes_per_row", "bytes per flow on disk: l7_audit", "{:.1f} B", "", None),
    ("disk.total_bytes_per_flow", "bytes per flow on disk: all tables", "{:.1f} B", "", None),
    ("replay.flows_per_s", "flowlog replay (JSON lines)", "{:,.0f} flows/s", "", None),
    ("baseline.flows_per_s", "ClickHouse INSERT ... FORMAT JSONEachRow, same lines", "{:,.0f} flows/s", "", None),
    ("replay.ratio_to_baseline", "  ratio replay / ClickHouse", "{:.2f}", ">= 0.50", lambda v: v >= 0.5),
    ("decode.best_us_per_flow", "decoder alone, CPU per flow (best round)", "{:.2f} µs", "", None),
    ("decode.median_us_per_flow", "  median round", "{:.2f} µs", "", None),
)


def get(results: dict, path: str):
    value = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(fmt: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, list):
        return ", ".join(fmt.format(v) for v in value)
    return fmt.format(value)


def table(results: dict, previous: dict | None = None) -> str:
    lines = []
    header = f"{'measure':<52} {'value':>17}  {'target':<10} {'':<4}"
    if previous is not None:
        header += f" {'compared run':>17}"
    lines.append(header)
    lines.append("-" * len(header))
    for path, label, fmt, target, check in ROWS:
        value = get(results, path)
        if isinstance(value, list) and len(value) < 2:
            continue
        if value is None and (previous is None or get(previous, path) is None):
            continue
        verdict = ""
        if check is not None and value is not None:
            verdict = "ok" if check(value) else "MISS"
        line = f"{label:<52} {_fmt(fmt, value):>17}  {target:<10} {verdict:<4}"
        if previous is not None:
            line += f" {_fmt(fmt, get(previous, path)):>17}"
        lines.append(line)
    return "\n".join(lines)


def columns(results: dict, top: int = 8) -> str:
    """The costliest columns of the typed tables, bytes per row after compression."""
    lines = []
    for table_name in ("http_flows", "dns_flows"):
        cols = get(results, f"disk.columns.{table_name}") or []
        if cols:
            parts = ", ".join(f"{c['column']} {c['bytes_per_row']:.1f}" for c in cols[:top])
            lines.append(f"  {table_name} costliest columns (B/row): {parts}")
    return "\n".join(lines)


def profile(summary: dict, top: int = 12) -> str:
    if not summary or not summary.get("samples"):
        return "  (no samples)"
    lines = ["  threads (% of samples): " + ", ".join(f"{n} {p}%" for n, p in summary["threads_pct"])]
    lines.append("  top functions by own time (% of samples):")
    lines += [f"    {p:5.1f}%  {n}" for n, p in summary["self_pct"][:top]]
    lines.append("  top functions by total time, callees included (% of samples):")
    lines += [f"    {p:5.1f}%  {n}" for n, p in summary["total_pct"][:top]]
    return "\n".join(lines)
