"""Opening the ClickHouse store: a server over HTTP(S) or the embedded chdb engine.

Both are reached through clickhouse-connect, so every query and insert takes the same
code path. `connect` only connects; `open_store` also brings the schema up to date when
the config says so (`store.migrate`).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ..config import Config
from ..masking import mask_dsn
from ..statedir import make_private_dir
from .flow_input import FLOW_INPUT
from .migrations import cluster_of, created_in, migrate


log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store could not be reached or refused us; the message never holds a secret."""


def connect(config: Config, create: bool = True, read_only: bool = False) -> Client:
    """A client for the configured store, with the database created if missing (unless
    read_only: a reader such as `flowlog serve` may hold a read-only grant). An embedded
    store whose directory does not exist is made only when create is set (a command meant
    to make one), and the log says where."""
    dsn = config.store_dsn
    scheme = urlsplit(dsn).scheme
    mask = config.masker()
    try:
        if scheme == "chdb":
            try:
                import chdb  # noqa: F401  (registers the chdb backend with clickhouse-connect)
            except ImportError:
                raise StoreError(f"store {dsn}: the embedded engine needs the 'embedded' extra "
                                 "(pip install 'hubble-flowlog[embedded]')") from None
            path = urlsplit(dsn).path
            if path and path != "memory" and not Path(path).is_dir():
                if not create:
                    raise StoreError(f"store {dsn}: there is no embedded store in {path} (`flowlog run`, `replay`, "
                                     "`demo` and `migrate` make one)")
                make_private_dir(Path(path))
                log.info("made a new embedded store in %s", path)
            elif path and path != "memory":
                make_private_dir(Path(path))  # one made before stores did this: its flows are no one else's
            client = clickhouse_connect.get_client(dsn=dsn)
        elif scheme in ("http", "https", "clickhouse", "clickhouses"):
            password = config.store_password()
            kwargs = {"password": password} if password else {}
            client = clickhouse_connect.get_client(dsn=dsn, **kwargs)
            # urllib3 would re-send a request after a TLS error and follow a redirect with
            # the same body: an insert's body streamed from a generator (clickhouse-connect
            # streams Native blocks so) would go again empty, and ClickHouse stores an empty
            # body as an insert of nothing, successfully. A failed request is the sink's to
            # retry, with its lookups and token.
            client.http_retries = 0
        else:
            raise StoreError(f"store {mask_dsn(dsn)}: unsupported scheme {scheme!r} "
                             "(use http(s)://user@host:8123 or chdb:///abs/dir)")
        if not read_only:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{config.store.database}`")
        return client
    except StoreError:
        raise
    except Exception as err:  # clickhouse-connect and chdb raise many kinds
        if scheme == "chdb" and _locked_by_another(Path(urlsplit(dsn).path)):
            raise StoreError(f"store {dsn}: the embedded store in {urlsplit(dsn).path} is in use by another process "
                             "(a flowlog run, replay or demo holds it while it runs): stop that first, or store in a "
                             "ClickHouse server, which many can read at once") from None
        raise StoreError(f"cannot reach store {mask_dsn(dsn)}: {mask(str(err))}") from None


def _locked_by_another(path: Path) -> bool:
    """Whether an engine holds the store's directory: ClickHouse keeps `status` locked
    (flock) while it runs. Asked only after opening it failed, as a lock this process
    itself holds would say the same."""
    if not path.is_absolute():  # chdb://memory, or no path: no directory to hold
        return False
    try:
        fd = os.open(path / "status", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock it took
    return False


# What `store.derive = store` needs of a store: the input table and the views that take
# its rows (flow_input is a Null table: without them an insert stores nothing, and
# succeeds) and, on a server, the protobuf schema taken with each insert.
_INPUT_VIEWS = tuple(FLOW_INPUT.view_name(target) for target, _, _ in FLOW_INPUT.targets)
_SCHEMA_WITH_INSERT = "format_schema_source"


def check_derive_in_store(client, database: str, server: bool) -> None:
    """StoreError naming what `store.derive = store` lacks in this store, at start: without
    it every insert would fail, and be retried, for as long as the ingester runs, or, the
    views missing, succeed and store nothing. The views are read from flow_input's own
    row of system.tables, which a user that may only insert into it sees as well."""
    rows = client.query("SELECT dependencies_table FROM system.tables WHERE database = {db:String} "
                        "AND name = {table:String}", parameters={"db": database, "table": FLOW_INPUT.name}).result_rows
    views = set(rows[0][0]) if rows else set()
    missing = ([] if rows else [FLOW_INPUT.name]) + [view for view in _INPUT_VIEWS if view not in views]
    if missing:
        raise StoreError(f"store.derive = store: database {database} has no {', '.join(missing)} (schema version "
                         f"{created_in(FLOW_INPUT)}): run `flowlog migrate` or let the ingester migrate "
                         "(store.migrate: true)")
    if server and missing_settings(client, [_SCHEMA_WITH_INSERT]):
        version = client.query("SELECT version()").result_rows[0][0]
        raise StoreError(f"store.derive = store: this ClickHouse server ({version}) cannot take a protobuf schema "
                         f"with an insert (the setting {_SCHEMA_WITH_INSERT}, ClickHouse 25.6 or later): upgrade "
                         "it, or set store.derive: ingester")


def missing_settings(client, names: list[str]) -> list[str]:
    """Those of the named settings the store does not know."""
    known = {row[0] for row in client.query("SELECT name FROM system.settings WHERE name IN {names:Array(String)}",
                                            parameters={"names": names}).result_rows}
    return [name for name in names if name not in known]


def open_store(config: Config, create: bool = True) -> Client:
    """A client for the configured store, migrated to this build's schema unless store.migrate
    is off; create as for connect."""
    client = connect(config, create)
    if config.store.migrate:
        migrate(client, config.store, cluster_of(config.store))
    return client
