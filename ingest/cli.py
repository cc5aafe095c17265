"""The `flowlog` command line: parses arguments, builds the config, calls the runner.

Errors end with one line on stderr (`flowlog: error: ...`) and a non-zero exit code:
2 for bad configuration or usage, 1 for a store or source that failed.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import select
import signal
import sys
import threading
import time

from . import __version__, logs
from .config import ConfigError, dump_yaml, env_name, load
from .masking import Masker, dsn_secrets
from .statedir import StateLock
from .store.queries import RANGE_PARAMS, Query, QueryError, canonical_type
from .store.queries import load as load_queries
from .times import DURATION_EXAMPLE, TIME_EXAMPLE, format_time, parse_duration, parse_time
from .visibility import KubeError, add_visibility_parser, ensure_visibility, run_visibility, visibility_overrides

log = logging.getLogger("flowlog")

# `flowlog sql --format` and `flowlog query --format` to ClickHouse's own output formats.
SQL_FORMATS = {"table": "PrettyCompactMonoBlock", "json": "JSONEachRow", "csv": "CSVWithNames",
               "tsv": "TabSeparatedWithNames"}
# `flowlog query` without --since or --from.
DEFAULT_SINCE = "1h"
# `flowlog replay`'s exit status when lines were dead-lettered, inputs could not be read,
# or no line was a flow (the summary line names them).
REPLAY_INCOMPLETE = 3
# The commands that make an embedded store where there is none; the others say there is none.
_MAKE_A_STORE = ("run", "replay", "demo", "migrate")

# A flow's values of 64 KB or more (a large header) are allocated with mmap, so memory
# they took goes back to the OS when they are freed. Otherwise glibc raises its mmap
# threshold after the first such free, up to 32 MB, and its heap keeps the high-water
# mark of large flows: with the store down and 100 KB headers (bench/memory.py) RSS grew
# 294-303 MB over idle at queue_mb = max_mb = 64, and 206 MB with the threshold fixed,
# which is queue_mb + 2 x max_mb + 16 MB (a batch, and its spool file's bytes while it is
# written). Flows of a few KB never reach it.
_MMAP_THRESHOLD_BYTES = 64 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h


def large_allocations_return_to_the_os() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


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
    parser.add_argument("--debug", action="store_true",
                        help="log at debug level, with gRPC's own lines, and show where an error came from")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowlog", description="Keeps Hubble's L7 flows in ClickHouse.")
    parser.add_argument("--version", action="version", version=f"flowlog {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="follow a Hubble server or Relay and ingest its L7 flows")
    _common(run)
    run.add_argument("--source", metavar="ADDRESS", help="unix:///var/run/cilium/hubble.sock (default), host:port "
                     "of Hubble Relay, or file:///var/run/cilium/hubble/events.log (Hubble exporter files; several "
                     "comma-separated)")
    run.add_argument("--namespace", action="append", help="only flows from or to this namespace (repeatable)")
    run.add_argument("--verdict", action="append", help="only flows with this verdict (repeatable)")
    run.add_argument("--tls", action="store_true", default=None, help="connect with TLS (Hubble Relay)")
    run.add_argument("--tls-ca-file", metavar="FILE")
    run.add_argument("--tls-cert-file", metavar="FILE", help="client certificate, for mTLS")
    run.add_argument("--tls-key-file", metavar="FILE", help="client key, for mTLS")
    run.add_argument("--tls-server-name", metavar="NAME")
    run.add_argument("--metrics-address", metavar="HOST:PORT", help="Prometheus endpoint ('' to disable)")
    run.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations at start")
    run.add_argument("--serve", action="store_true",
                     help="also serve Hubble's API over the stored flows on serve.listen (flowlog serve in this "
                          "process: the embedded store can be opened by one process at a time)")
    run.add_argument("--ensure-visibility", action="store_true",
                     help="apply the visibility policy (config section visibility) at start; "
                          "needs deploy/components/visibility's RBAC")

    replay = commands.add_parser("replay", help="ingest `hubble observe -o jsonpb` or exporter files")
    _common(replay)
    replay.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines, optionally .gz; - for stdin")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    migrate = commands.add_parser("migrate", help="create or upgrade the tables")
    _common(migrate)
    migrate.add_argument("--print", action="store_true",
                         help="print the schema as it is now instead of applying it (to create the tables by hand)")
    migrate.add_argument("--history", action="store_true",
                         help="print every migration in turn instead, each with a comment saying what it did")
    migrate.add_argument("--write-sql", action="store_true", help="rewrite sql/migrations/ from ingest/store/")
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

    from .history.command import add_serve_parser
    add_serve_parser(commands, _common)
    from .history import observe
    observe.add_arguments(commands.add_parser(
        "observe", help="show stored flows from `flowlog serve`, as `hubble observe` shows live ones",
        description="Ask a history server (`flowlog serve`) for flows, with hubble observe's flags and output."))

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
    if args.command == "serve":
        from .history.command import serve_overrides
        overrides.update(serve_overrides(args))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        overrides[key.strip()] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    # gRPC's own C-core lines ("Got goaway ...") read like errors; the ingester reports
    # what matters about a stream itself. Read once, when grpc is first imported: by the
    # parser already (serve, observe).
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if "--debug" in (sys.argv[1:] if argv is None else argv)
                          else "ERROR")
    args = build_parser().parse_args(argv)
    if args.command == "observe":  # a client of a server: no config, no store
        from .history import observe
        return observe.run(args)
    debug = getattr(args, "debug", False)
    # Whatever the process writes (the embedded store's files, a merge's new parts) is its
    # user's only: it holds flows.
    os.umask(0o077)
    mask = Masker()
    try:
        config = load(args.config, overrides=_overrides(args))
        mask = config.masker()
        logs.configure(config.log.format, "debug" if debug else config.log.level, mask)
        return _dispatch(args, config)
    except ConfigError as err:
        print(f"flowlog: error: {mask(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            # The reader went away (`flowlog query ... | head`): as other command-line tools,
            # stop quietly. Python's flush of stdout at exit would fail again: point it elsewhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if debug:
            log.exception("failed")
        first = (mask(str(err)).strip().splitlines() or [""])[0]
        # Ours and the store's errors say what failed; the host's (a full disk, a missing
        # permission) need their kind; anything else is a defect.
        ours = type(err).__module__.split(".")[0] in ("ingest", "clickhouse_connect", "chdb") or isinstance(
            err, KubeError)
        text = first if ours and first else f"{type(err).__name__}: {first}"
        hint = "" if ours or isinstance(err, OSError) or debug else " (a defect: --debug shows where; please report it)"
        print(f"flowlog: error: {text}{hint}", file=sys.stderr)
        return 1


def _stdout_closed() -> bool:
    """Whether the reader of stdout went away: a flush fails, or (the failed write having
    dropped what was buffered) the pipe reports an error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor behind stdout
        return False


def _secret_on_command_line(args: argparse.Namespace) -> bool:
    """Whether a password or token came in argv, which every user of the node can read
    (/proc/PID/cmdline) for as long as the process runs."""
    overrides = _overrides(args)
    if overrides.get("store.password"):
        return True
    secrets, _ = dsn_secrets(overrides.get("store.dsn", ""))
    return bool(secrets)


def _dispatch(args: argparse.Namespace, config) -> int:
    if args.command == "config":
        sys.stdout.write(config.masker()(dump_yaml(config)))
        return 0
    if args.command in ("run", "replay", "demo", "serve") and _secret_on_command_line(args):
        log.warning("the store's password or token is on the command line, where every user of this node can "
                    "read it: give it in %s or in a file named by store.password_file (%s) instead",
                    env_name("store.password"), env_name("store.password_file"))
    if args.command == "migrate" and (args.print or args.history or args.write_sql):
        return _migrate_offline(args, config)
    if args.command == "query":
        return run_query(args, config)
    from .store.connection import connect, open_store
    if args.command == "visibility":  # status reads the store: it never creates or migrates it
        return run_visibility(args, config, lambda: connect(config, create=False, read_only=True))
    if args.command == "serve":
        from .history.command import run_serve
        return run_serve(config)
    if args.command == "run" and args.ensure_visibility:
        # Before the store: a missing RBAC grant or a cluster without Cilium fails fast.
        ensure_visibility(config.visibility)

    # A second run, replay or demo on the state dir stops here, before it touches the store.
    lock = StateLock(config.state_path) if args.command in ("run", "replay", "demo") else None
    if lock is not None:
        lock.acquire()
        large_allocations_return_to_the_os()
    try:
        # `sql` reads: a typo in --database makes no database, and a newer build does not
        # migrate a production store on the way to a SELECT.
        client = open_store(config, create=True) if args.command in _MAKE_A_STORE else \
            connect(config, create=False, read_only=True)
        return _with_store(args, config, client, lock)
    finally:
        if lock is not None:
            lock.release()


def _with_store(args: argparse.Namespace, config, client, lock) -> int:
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
            return _replay(args, config, client, lock)
        if args.command == "run":
            return _run(config, client, lock, serve=args.serve)
        if args.command == "demo":
            from .demo.command import run_demo
            return run_demo(config, client, args.duration, args.seed, lock)
    finally:
        client.close()
    raise AssertionError(args.command)


def _migrate_offline(args, config) -> int:
    from .store.migrations import MIGRATIONS, SCHEMA_VERSION, cluster_of, render, render_current, write_sql
    if args.write_sql:
        for path in write_sql():
            print(f"wrote {path}")
        return 0
    cluster = cluster_of(config.store)
    if not args.history:
        print(f"-- The hubble-flowlog schema as of version {SCHEMA_VERSION}, for database {config.store.database}"
              f"{f' on cluster {cluster.name}' if cluster else ''}.\n"
              "-- The last statement records the version, so `flowlog run` finds nothing to migrate.\n")
        for statement in render_current(config.store, cluster):
            print(statement + ";\n")
        return 0
    for migration in MIGRATIONS:
        print(f"-- Migration {migration.version:04d}_{migration.name}: {migration.summary}.\n")
        for statement in render(migration.version, config.store, cluster):
            print(statement + ";\n")
    return 0


def _replay(args, config, client, lock) -> int:
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
        summary = replay(config, client, args.files, progress, lock)
    finally:
        if bar is not None:
            bar.close()
    print(summary.line())
    return 0 if summary.complete else REPLAY_INCOMPLETE


def _run(config, client, lock, serve: bool = False) -> int:
    from .runner import Ingester
    ingester = Ingester(config, client, lock=lock, serving_history=serve)
    history = None
    if serve:
        from .history.command import start_server
        history = start_server(config)

    def on_signal(signum, frame):
        log.info("received %s: flushing and stopping", signal.Signals(signum).name)
        ingester.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        ingester.run()
    finally:
        if history is not None:
            history.stop()
    return 0


# --- flowlog query ---------------------------------------------------------------------------

def listing(queries: dict[str, Query]) -> str:
    """`flowlog query --list`: each query, what it answers, its parameters and columns."""
    out = []
    for query in queries.values():
        out.append(f"{query.name}: {query.summary}")
        for param in query.params:
            if param.name in RANGE_PARAMS:
                continue
            if param.required:
                default = "required"
            else:
                default = f"default {param.default!r}" if canonical_type(param.type) == "String" \
                    else f"default {param.default}"
            out.append(f"    {param.name} ({param.type}, {default}): {param.description}")
        out.append(f"    columns: {', '.join(query.columns)}")
    out.append("")
    out.append("Set parameters with --param NAME=VALUE. Every query covers --since DURATION up to now "
               f"(default {DEFAULT_SINCE}), or --from TIME [--until TIME]; times are UTC unless they name a zone.")
    return "\n".join(out) + "\n"


def time_range(since: str | None, start: str | None, end: str | None, now_ns: int | None = None) -> tuple[int, int]:
    """(from, until) in nanoseconds for --since / --from / --until."""
    if since and start:
        raise QueryError("--since and --from exclude each other")

    def parse_flag(flag: str, text: str) -> int:
        try:
            return parse_time(text)
        except ValueError:
            raise QueryError(f"{flag} {text}: expected a time like {TIME_EXAMPLE}") from None

    until = parse_flag("--until", end) if end else (now_ns if now_ns is not None else time.time_ns())
    if start:
        since_ns = parse_flag("--from", start)
    else:
        try:
            since_ns = until - parse_duration(since or DEFAULT_SINCE)
        except ValueError:
            raise QueryError(f"--since {since}: expected a duration like {DURATION_EXAMPLE}") from None
    if since_ns < parse_time("1900-01-01"):
        raise QueryError(f"--since {since}: reaches before 1900, where ClickHouse's DateTime64 begins")
    if since_ns >= until:
        raise QueryError(f"empty time range: {format_time(since_ns)} is not before {format_time(until)}")
    return since_ns, until


def command_values(query: Query, params: list[str], since: str | None, start: str | None,
                   end: str | None, now_ns: int | None = None) -> dict[str, str]:
    """The parameter values of `--param NAME=VALUE ...` and the time range flags."""
    values: dict[str, str] = {}
    for item in params:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise QueryError(f"--param {item}: expected NAME=VALUE")
        if name in RANGE_PARAMS and query.param(name) is not None:
            raise QueryError(f"query {query.name}: parameter {name}: give the time range with --since or "
                             "--from/--until")
        if name in values:
            raise QueryError(f"query {query.name}: parameter {name} given twice")
        values[name] = value
    if any(query.param(name) for name in RANGE_PARAMS):
        since_ns, until_ns = time_range(since, start, end, now_ns)
        values["from"], values["until"] = format_time(since_ns), format_time(until_ns)
    return values


def add_query_parser(subparsers, common) -> argparse.ArgumentParser:
    """`flowlog query`; common adds the shared --config/--store/... flags."""
    parser = subparsers.add_parser(
        "query", help="run a named query from the library (sql/queries/)",
        description="Run a named, tested query from sql/queries/. `flowlog query --list` shows them all "
                    "with their parameters.")
    common(parser)
    parser.add_argument("name", nargs="?", metavar="NAME", help="the query (see --list)")
    parser.add_argument("--list", action="store_true", help="list the queries and their parameters")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="a query parameter (repeatable)")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--since", metavar="DURATION", help=f"the range up to --until (or now): 90s, 15m, 1h, 7d, 2w "
                      f"(default {DEFAULT_SINCE})")
    span.add_argument("--from", dest="from_time", metavar="TIME", help="start of the range (ISO 8601; UTC if no zone)")
    parser.add_argument("--until", metavar="TIME", help="end of the range, exclusive (default now)")
    parser.add_argument("--format", choices=list(SQL_FORMATS), default="table", help="output format (default table)")
    return parser


def run_query(args: argparse.Namespace, config, client=None) -> int:
    """`flowlog query`: list the queries, or run one and write ClickHouse's output to stdout.

    Refusals raise QueryError before the store is touched; with client None the store is
    opened (and closed) here, so `--list` and refused parameters need no store.
    """
    queries = load_queries()
    if args.list:
        chosen = {args.name: queries[args.name]} if args.name in queries else queries
        sys.stdout.write(listing(chosen))
        return 0
    if not args.name:
        raise QueryError("query: name a query, or --list to see them")
    if args.name not in queries:
        raise QueryError(f"query {args.name}: no such query (have: {', '.join(queries)})")
    query = queries[args.name]
    values = command_values(query, args.param, args.since, args.from_time, args.until)
    query.bind(values)  # refuse before opening the store
    own = client is None
    if own:
        from .store.connection import connect
        client = connect(config, create=False, read_only=True)  # a query reads: no database made, no migration
    try:
        out = query.run(client, values, SQL_FORMATS[args.format], config.store.database)
    finally:
        if own:
            client.close()
    stream = getattr(sys.stdout, "buffer", None)
    if stream is not None:
        sys.stdout.flush()
        stream.write(out)
        stream.flush()
    else:
        sys.stdout.write(out.decode("utf-8", "replace"))
    if not out and args.format == "table":
        print(f"query {query.name}: no rows", file=sys.stderr)
    return 0
