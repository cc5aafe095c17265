"""Bytes on disk per flow, per table, of a store the ingester has finished with.

    python -m bench.store_stats STORE_DIR [DATABASE]

Opens the embedded store (it must not be open in another process), runs `OPTIMIZE
TABLE ... FINAL` on every MergeTree-family table of the database so each partition is
one part (as it is after background merges on a real node), then reads
`system.parts` (active parts: rows, bytes_on_disk, compressed and uncompressed data
bytes) and `system.columns` (compressed bytes per column; a Compact part, which
has no per-column sizes, is rewritten as Wide for that breakdown afterwards). Prints
one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def stats(store_dir: str, database: str = "flowlog") -> dict:
    import chdb  # noqa: F401  (registers the chdb backend)
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{store_dir}")
    tables = [row[0] for row in client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree' ORDER BY name",
        parameters={"db": database}).result_rows]
    started = time.perf_counter()
    for table in tables:
        client.command(f"OPTIMIZE TABLE `{database}`.`{table}` FINAL")
    optimize_s = time.perf_counter() - started
    parts = {}
    for table, parts_count, rows, on_disk, compressed, uncompressed in client.query(
            "SELECT table, count(), sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), "
            "sum(data_uncompressed_bytes) FROM system.parts WHERE active AND database = {db:String} GROUP BY table",
            parameters={"db": database}).result_rows:
        parts[table] = {"parts": int(parts_count), "rows": int(rows), "bytes_on_disk": int(on_disk),
                        "data_compressed_bytes": int(compressed), "data_uncompressed_bytes": int(uncompressed),
                        "bytes_per_row": round(on_disk / rows, 1) if rows else None}
    # Per-column sizes exist only in Wide parts; a small table's Compact part is rewritten
    # as Wide for this breakdown (after the bytes above were read).
    for table in ("http_flows", "dns_flows", "l7_audit"):
        compact = client.query("SELECT count() FROM system.parts WHERE active AND database = {db:String} "
                               "AND table = {t:String} AND part_type != 'Wide'",
                               parameters={"db": database, "t": table}).result_rows[0][0]
        if compact:
            client.command(f"ALTER TABLE `{database}`.`{table}` MODIFY SETTING min_bytes_for_wide_part = 0, "
                           "min_rows_for_wide_part = 0")
            client.command(f"OPTIMIZE TABLE `{database}`.`{table}` FINAL")
    columns = {}
    for table, name, compressed, uncompressed in client.query(
            "SELECT table, name, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
            "WHERE database = {db:String} AND table IN ('http_flows', 'dns_flows', 'l7_audit') "
            "ORDER BY table, data_compressed_bytes DESC", parameters={"db": database}).result_rows:
        rows = parts.get(table, {}).get("rows") or 0
        columns.setdefault(table, []).append({"column": name, "compressed": int(compressed),
                                              "uncompressed": int(uncompressed),
                                              "bytes_per_row": round(compressed / rows, 2) if rows else None})
    client.close()
    return {"database": database, "optimize_s": round(optimize_s, 2), "tables": parts, "columns": columns}


if __name__ == "__main__":
    print(json.dumps(stats(sys.argv[1], *(sys.argv[2:3] or ["flowlog"]))), flush=True)
