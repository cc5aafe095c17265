"""The `flowlog` command line: parses arguments, builds the config, calls the runner.

Errors end with one line on stderr (`flowlog: error: ...`) and a non-zero exit code:
2 for bad configuration or usage, 1 for a store or source that failed.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time

from . import __version__, logs
from .config import ConfigError, dump_yaml, load
from .queries import FORMATS as SQL_FORMATS
from .queries import add_query_parser
from .visibility import KubeError, add_visibility_parser, ensure_visibility, run_visibility, visibility_overrides

log = logging.getLogger("flowlog")

OWN_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("--store", metavar="DSN", help="http(s)://user@host:8123 or chdb:///abs/dir "
                        "(default: embedded store in <state-dir>/clickhouse)")
    parser.add_argument("--database", help="ClickHouse database (default flowlog)")
    parser.add_argument("--state-dir", help="where checkpoints, dead letters and the embedded store live")
    parser.add_argument("--log-format", choices=["plain", "json"])
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="set any config key, e.g. --set batch.max_rows=50000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowlog", description="Keeps Hubble's L7 flows in ClickHouse.")
    parser.add_argument("--version", action="version", version=f"flowlog {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="follow a Hubble server or Relay and ingest its L7 flows")
    _common(run)
    run.add_argument("--source", metavar="ADDRESS", help="unix:///var/run/cilium/hubble.sock (default) or host:port")
    run.add_argument("--namespace", action="append", help="only flows from or to this namespace (repeatable)")
    run.add_argument("--verdict", action="append", help="only flows with this verdict (repeatable)")
    run.add_argument("--tls", action="store_true", default=None, help="connect with TLS (Hubble Relay)")
    run.add_argument("--tls-ca-file", metavar="FILE")
    run.add_argument("--tls-cert-file", metavar="FILE", help="client certificate, for mTLS")
    run.add_argument("--tls-key-file", metavar="FILE", help="client key, for mTLS")
    run.add_argument("--tls-server-name", metavar="NAME")
    run.add_argument("--metrics-address", metavar="HOST:PORT", help="Prometheus endpoint ('' to disable)")
    run.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations at start")
    run.add_argument("--ensure-visibility", action="store_true",
                     help="apply the visibility policy (config section visibility) at start; "
                          "needs deploy/components/visibility's RBAC")

    replay = commands.add_parser("replay", help="ingest `hubble observe -o jsonpb` or exporter files")
    _common(replay)
    replay.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines, optionally .gz; - for stdin")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    migrate = commands.add_parser("migrate", help="create or upgrade the tables")
    _common(migrate)
    migrate.add_argument("--print", action="store_true", help="print the DDL instead of applying it")
    migrate.add_argument("--write-sql", action="store_true", help="rewrite sql/migrations/ from ingest/schema.py")
    migrate.add_argument("--cluster", metavar="NAME", help="create replicated, sharded tables ON CLUSTER NAME")
    migrate.add_argument("--sharding", choices=["node", "random"], help="spread rows over shards by node (default)")

    sql = commands.add_parser("sql", help="run ad-hoc SQL against the store")
    _common(sql)
    sql.add_argument("query", help="the SQL; tables of the configured database need no prefix")
    sql.add_argument("--format", choices=sorted(SQL_FORMATS), default="table")

    add_query_parser(commands, _common)

    demo = commands.add_parser("demo", help="ingest generated traffic from an in-process Hubble and summarise it")
    _common(demo)
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    demo.add_argument("--seed", type=int, default=1)

    add_visibility_parser(commands, _common)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the effective config, secrets masked")
    _common(show)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    flags = {"store.dsn": "store", "store.database": "database", "state_dir": "state_dir",
             "log.format": "log_format", "log.level": "log_level", "source.address": "source",
             "source.namespaces": "namespace", "source.verdicts": "verdict", "source.tls.enabled": "tls",
             "source.tls.ca_file": "tls_ca_file", "source.tls.cert_file": "tls_cert_file",
             "source.tls.key_file": "tls_key_file", "source.tls.server_name": "tls_server_name",
             "metrics.address": "metrics_address", "store.cluster": "cluster", "store.sharding": "sharding"}
    overrides = {key: getattr(args, attr) for key, attr in flags.items() if getattr(args, attr, None) is not None}
    if getattr(args, "no_migrate", False):
        overrides["store.migrate"] = False
    overrides.update(visibility_overrides(args))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        overrides[key.strip()] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config, overrides=_overrides(args))
        logs.configure(config.log.format, config.log.level, config.secrets())
        return _dispatch(args, config)
    except ConfigError as err:
        print(f"flowlog: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        from clickhouse_connect.driver.exceptions import ClickHouseError
        from .migrate import MigrationError
        from .sources.hubble import SourceError
        from .store import StoreError, redact
        if not isinstance(err, (StoreError, MigrationError, SourceError, ClickHouseError, KubeError)):
            log.exception("unexpected error")
        message = redact(str(err), config.secrets()).strip().splitlines()[0]
        print(f"flowlog: error: {message}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, config) -> int:
    if args.command == "config":
        sys.stdout.write(dump_yaml(config))
        return 0
    if args.command == "migrate" and (args.print or args.write_sql):
        return _migrate_offline(args, config)
    if args.command == "query":
        from .queries import run_query
        return run_query(args, config)
    if args.command == "visibility":
        from .runner import open_store
        return run_visibility(args, config, lambda: open_store(config))
    if args.command == "run" and args.ensure_visibility:
        # Before the store: a missing RBAC grant or a cluster without Cilium fails fast.
        ensure_visibility(config.visibility)

    from .runner import open_store
    client = open_store(config)
    try:
        if args.command == "migrate":
            print(f"schema of {config.store.database} is up to date")
            return 0
        if args.command == "sql":
            client.database = config.store.database
            # A query that names its own FORMAT keeps it.
            fmt = None if OWN_FORMAT.search(args.query) else SQL_FORMATS[args.format]
            sys.stdout.write(client.raw_query(args.query, fmt=fmt).decode("utf-8", "replace"))
            return 0
        if args.command == "replay":
            return _replay(args, config, client)
        if args.command == "run":
            return _run(config, client)
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(config, client, args.duration, args.seed)
    finally:
        client.close()
    raise AssertionError(args.command)


def _migrate_offline(args, config) -> int:
    from .migrate import render, write_sql
    from .schema import SCHEMA_VERSION
    if args.write_sql:
        for path in write_sql():
            print(f"wrote {path}")
        return 0
    for version in range(1, SCHEMA_VERSION + 1):
        for statement in render(version, config.store, config.cluster):
            print(statement + ";\n")
    return 0


def _replay(args, config, client) -> int:
    from .runner import replay
    progress = None
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm
        import os
        total = sum(os.path.getsize(p) for p in args.files if p != "-") or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", file=sys.stderr)
        started = time.monotonic()
        lines = 0

        def progress(size: int) -> None:
            nonlocal lines
            lines += 1
            bar.update(size)
            if lines % 2000 == 0:
                bar.set_postfix_str(f"{lines / (time.monotonic() - started):,.0f} lines/s", refresh=False)
    try:
        summary = replay(config, client, args.files, progress)
    finally:
        if bar is not None:
            bar.close()
    print(summary.line())
    return 0


def _run(config, client) -> int:
    from .runner import Ingester
    ingester = Ingester(config, client)

    def on_signal(signum, frame):
        log.info("received %s: flushing and stopping", signal.Signals(signum).name)
        ingester.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    ingester.run()
    return 0
