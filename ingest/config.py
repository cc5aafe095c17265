"""The one typed configuration object, built once at start and passed down.

Precedence, lowest first: defaults, the YAML file (`--config`), environment
variables (`FLOWLOG_<SECTION>_<KEY>`, e.g. `FLOWLOG_STORE_DSN`; `FLOWLOG_STORE` is
kept as a short alias of it), then command-line flags. Unknown keys and values of the
wrong type are refused with an error naming the key. Nothing else in the package
reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .masking import MASK, Masker, credential_forms, dsn_secrets, mask_dsn, without_userinfo

DEFAULT_SOURCE = "unix:///var/run/cilium/hubble.sock"
# A source address that names Hubble exporter files: file:///var/run/cilium/hubble/events.log
FILE_SCHEME = "file://"
DEFAULT_STATE_DIR = "flowlog-data"
SENSITIVE_HEADERS = ["Authorization", "Cookie", "Set-Cookie", "Proxy-Authorization", "X-Api-Key", "X-Auth-Token",
                     "X-Amz-Security-Token", "X-ClickHouse-Key"]
# Query parameters that carry credentials by convention (OAuth, cloud presigned URLs, API keys).
SENSITIVE_QUERY_PARAMS = ["access_token", "id_token", "refresh_token", "token", "api_key", "apikey", "api-key", "key",
                          "secret", "client_secret", "password", "passwd", "pwd", "auth", "authorization", "code",
                          "sig", "signature", "jwt", "session", "sessionid", "session_id", "api_token",
                          "auth_token", "private_token", "access-token", "credential", "x-amz-signature",
                          "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential"]


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


# The smallest value a numeric key takes, and whether that value itself is allowed.
_at_least_0 = {"min": 0}
_at_least_1 = {"min": 1}
_positive = {"min": 0, "exclusive": True}


@dataclass
class TLSConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


@dataclass
class SourceConfig:
    address: str = DEFAULT_SOURCE
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Only flows from or to these namespaces ("ns/" pod-name prefixes in Hubble's filter).
    namespaces: list[str] = field(default_factory=list)
    # Only flows with these verdicts (FORWARDED, DROPPED, ...); empty means all.
    verdicts: list[str] = field(default_factory=list)
    reconnect_initial_s: float = field(default=0.5, metadata=_positive)
    reconnect_max_s: float = field(default=30.0, metadata=_positive)
    # A reconnect or restart asks for flows since the oldest node's newest flow less this,
    # and looks up what it re-reads: above Relay's sort-buffer drain (1 s) plus the clock
    # skew between nodes.
    resume_margin_s: float = field(default=10.0, metadata=_at_least_0)
    # A node not heard from for this long (by this host's clock) no longer holds the
    # resume point back: it left the cluster, or has no L7 traffic.
    node_idle_s: float = 600.0
    # file:// sources: how often a followed file is looked at when it has nothing new.
    file_poll_s: float = field(default=0.25, metadata=_positive)

    @property
    def files(self) -> list[str] | None:
        """The exporter files a `file://` address names (several separated by commas), or
        None when the source is a Hubble server. ConfigError when a path is not absolute."""
        if not self.address.startswith(FILE_SCHEME):
            return None
        paths = []
        for part in self.address.split(","):
            part = part.strip()
            path = part[len(FILE_SCHEME):] if part.startswith(FILE_SCHEME) else ""
            if not path.startswith("/"):
                raise ConfigError(f"source.address: {part!r} is no file:///absolute/path (several are separated by "
                                  "commas)")
            paths.append(os.path.normpath(path))
        if len(set(paths)) < len(paths):
            raise ConfigError(f"source.address: a file is named twice in {self.address!r}")
        return paths


@dataclass
class StoreConfig:
    # Empty means the embedded engine in <state_dir>/clickhouse.
    dsn: str = ""
    database: str = "flowlog"
    password: str = ""
    password_file: str = ""
    # Rows older than this are dropped (whole daily partitions); 0 keeps them forever.
    ttl_days: int = field(default=0, metadata=_at_least_0)
    # The same for the 1-minute rollups, which dashboards read over long ranges.
    rollup_ttl_days: int = field(default=0, metadata=_at_least_0)
    migrate: bool = True
    # A ClickHouse cluster (remote_servers name): replicated shard-local tables behind
    # Distributed tables of the usual names. Empty for a single server.
    cluster: str = ""
    # How rows are spread over shards: "node" keeps one Cilium node's flows together; "random".
    sharding: str = "node"
    # Who fills the flow tables from a received flow: "ingester" (the ingester decodes every
    # column and inserts rows) or "store" (the ingester sends the redacted flow and what
    # only it knows, and ClickHouse's views derive the columns: less of a node's CPU).
    derive: str = "ingester"
    # A failing store is retried with exponential backoff from the first value, capped at the second.
    retry_initial_s: float = field(default=0.2, metadata=_positive)
    retry_max_s: float = field(default=30.0, metadata=_positive)


@dataclass
class BatchConfig:
    # ClickHouse prefers few large inserts: flush at this many rows or this age.
    max_rows: int = field(default=20000, metadata=_at_least_1)
    max_delay_ms: int = field(default=1000, metadata=_at_least_0)
    queue_size: int = field(default=50000, metadata=_at_least_1)
    # Memory in bytes, counted as what decoded flows hold (twice their protobuf size, plus
    # 1 KB: decoder.held_bytes): a batch closes at max_mb (and at half of spool.max_mb, so
    # one fits the spool), and a queue of queue_mb pauses reading, whatever the number of
    # flows. With the store down, RSS grows by at most queue_mb + 2 x max_mb + 20 MB.
    max_mb: int = field(default=64, metadata=_at_least_1)
    queue_mb: int = field(default=64, metadata=_at_least_1)


@dataclass
class SpoolConfig:
    # Batches wait here (beside the checkpoint) while the store is down; when it is
    # full, reading from Hubble pauses. 512 MiB holds about a million flows.
    max_mb: int = field(default=512, metadata=_at_least_1)


@dataclass
class DeadLettersConfig:
    # dead-letter.jsonl is moved to dead-letter.jsonl.1 (replacing the one before) when it
    # reaches this size: bad input that keeps coming cannot fill the node's disk.
    max_mb: int = field(default=64, metadata=_at_least_1)


@dataclass
class HTTPConfig:
    # Headers stored in http_flows.headers; "*" keeps every header.
    headers_allow: list[str] = field(default_factory=lambda: ["*"])
    headers_redact: list[str] = field(default_factory=lambda: list(SENSITIVE_HEADERS))
    # Removes the whole query (and fragment) of every URL: Cilium's hubble-redact-http-urlquery.
    strip_query: bool = False
    strip_userinfo: bool = True
    # The values of these query parameters are redacted, the names and other values kept:
    # page numbers and ids are what an audit looks for, tokens are not.
    query_params_redact: list[str] = field(default_factory=lambda: list(SENSITIVE_QUERY_PARAMS))
    # Redacts every query parameter's value instead.
    redact_query_values: bool = False
    # Naming HTTP peers outside the cluster from the DNS answers their clients got.
    dns_cache_entries: int = field(default=100_000, metadata=_at_least_0)
    dns_grace_s: float = field(default=60.0, metadata=_at_least_0)


@dataclass
class KafkaConfig:
    # Cilium's hubble-redact-kafka-apikey: the api_key of Kafka flows (kept in l7_audit).
    redact_api_key: bool = False


@dataclass
class LogConfig:
    format: str = "plain"
    level: str = "info"


@dataclass
class MetricsConfig:
    # Serves /metrics, /healthz and /readyz; clear of Cilium's and Hubble's 4244, 4245, 9962-9966.
    address: str = "0.0.0.0:9970"
    # The L7 metrics derived from the stored flows (flowlog_http_*, flowlog_dns_*). Hubble
    # exports the same ones itself; off saves their 1.5 to 2.1 µs of CPU a flow (bench/scrape.py).
    l7: bool = True
    # Series per derived L7 metric; past it, new workloads are counted under "other".
    max_series: int = field(default=2000, metadata=_at_least_1)  # exposed: a histogram's label set counts 14
    # Derived L7 series not updated for this long are dropped.
    series_ttl_s: float = field(default=600.0, metadata=_positive)


@dataclass
class VisibilityConfig:
    """The L7 CiliumNetworkPolicy that makes Hubble see HTTP and DNS (`flowlog visibility`)."""
    name: str = "flowlog-l7-visibility"
    # Namespaces whose endpoints get visibility; one policy per namespace.
    namespaces: list[str] = field(default_factory=lambda: ["default"])
    # Instead of namespaces: endpoints matching these labels ("key=value").
    endpoint_labels: list[str] = field(default_factory=list)
    # One CiliumClusterwideNetworkPolicy instead of per-namespace policies.
    cluster_wide: bool = False
    http_ports: list[str] = field(default_factory=lambda: ["80", "8080"])
    dns: bool = True
    http_egress: bool = True
    http_ingress: bool = False
    # Peers whose HTTP traffic is made visible ("key=value" labels); empty means any peer.
    peers: list[str] = field(default_factory=list)
    # observe: see traffic without changing what is allowed; enforce: the restrictive shape.
    mode: str = "observe"
    # For Cilium < 1.16 (no enableDefaultDeny): add explicit allow-all rules instead.
    legacy_allow_all: bool = False
    # `visibility status`: how recent an L7 flow must be to count as "flows arriving".
    status_window_minutes: int = field(default=15, metadata=_at_least_1)


@dataclass
class ServeConfig:
    """`flowlog serve`: Hubble's observer API over the stored flows."""
    # Hubble Relay's port, which the hubble CLI and Hubble UI use by default.
    listen: str = "0.0.0.0:4245"
    # `flowlog serve`'s /metrics, /healthz and /readyz ("" for none); beside metrics.address,
    # so both commands run on one host. `flowlog run --serve` answers on metrics.address.
    metrics_address: str = "0.0.0.0:9971"
    # cert_file and key_file serve TLS; ca_file as well requires client certificates (mTLS).
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Each store query of a request: ClickHouse stops it past these, and the client gets
    # RESOURCE_EXHAUSTED naming the key (max_execution_time, max_memory_usage, max_rows_to_read).
    query_timeout_s: float = field(default=30.0, metadata=_positive)
    query_memory_mb: int = field(default=1024, metadata=_at_least_1)
    query_max_rows_read: int = field(default=200_000_000, metadata=_at_least_1)
    # Flows read from the store at once; a longer window is read in parts.
    page_rows: int = field(default=5000, metadata=_at_least_1)
    # GetFlows calls served at once; more are refused with RESOURCE_EXHAUSTED.
    max_streams: int = field(default=32, metadata=_at_least_1)
    # follow: the store is polled this often, and a flow is sent once it is this old, so
    # that flows stored a little late (batching, Relay's sort buffer) still come in order.
    follow_poll_s: float = field(default=0.5, metadata=_positive)
    follow_delay_s: float = field(default=3.0, metadata=_at_least_0)
    # A flow stored later than this after its time is not sent to a follow already past it.
    follow_window_s: float = field(default=120.0, metadata=_positive)
    # GetNodes: a node with a flow stored within this is connected, else unavailable.
    node_recent_s: float = field(default=600.0, metadata=_positive)


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    dead_letters: DeadLettersConfig = field(default_factory=DeadLettersConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    visibility: VisibilityConfig = field(default_factory=VisibilityConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    # Checkpoints, the spool and the dead-letter file live here, beside the embedded store.
    state_dir: str = DEFAULT_STATE_DIR
    # On SIGTERM, how long to keep trying the store before leaving batches in the spool;
    # the DaemonSet's terminationGracePeriodSeconds must exceed it.
    shutdown_timeout_s: float = field(default=20.0, metadata=_at_least_0)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def store_dsn(self) -> str:
        return self.store.dsn or f"chdb://{self.state_path / 'clickhouse'}"

    def store_password(self) -> str:
        if self.store.password:
            return self.store.password
        if self.store.password_file:
            try:
                return Path(self.store.password_file).read_text().strip()
            except OSError as err:
                raise ConfigError(f"store.password_file: cannot read {self.store.password_file}: {err.strerror}") from None
        return ""

    def secrets(self) -> list[str]:
        """Every secret value in this config, in every form it can take in text."""
        found, users = dsn_secrets(self.store_dsn)
        found.append(self.store_password())
        users.append("default")  # clickhouse-connect's user when none is named
        return sorted({form for secret in found if secret for form in credential_forms(secret, users)})

    def masker(self) -> Masker:
        """What every error, log line and printed value goes through."""
        return Masker(self.secrets())


class _Text(str):
    """A value typed on a command line or in the environment: parsed, where YAML values are checked."""


def _hints(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


# Keys whose values are secrets: an error names their type, never the value.
_SECRET_KEYS = ("store.password", "store.dsn")


def _shown(key: str, value) -> str:
    return f"a {type(value).__name__} (not shown: a secret)" if key in _SECRET_KEYS else repr(value)


def _coerce(key: str, value, hint):
    """Check or convert one value; strings (from env and flags) are parsed."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, _Text):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {_shown(key, value)}")
        return value
    if hint is bool:
        if isinstance(value, _Text) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(key, value)}")
        return value
    if hint in (int, float):
        expected = "an integer" if hint is int else "a number"
        if isinstance(value, _Text):
            try:
                number = hint(value)
            except ValueError:
                raise ConfigError(f"{key}: expected {expected}, got {_shown(key, value)}") from None
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected {expected}, got {_shown(key, value)}")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise ConfigError(f"{key}: expected {expected}, got {_shown(key, value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected {expected}, got {_shown(key, value)}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(key, value)}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint}")


def _build(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(hints))})")
    values = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    for spec in dataclasses.fields(cls):
        bound = spec.metadata.get("min")
        if bound is None or spec.name not in values:
            continue
        value = values[spec.name]
        if not value >= bound or (spec.metadata.get("exclusive") and value == bound):
            least = f"more than {bound}" if spec.metadata.get("exclusive") else f"at least {bound}"
            raise ConfigError(f"{prefix}{spec.name}: expected {least}, got {value}")
    return cls(**values)


def leaf_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. 'source.tls.ca_file'."""
    keys = []
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += leaf_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def env_name(dotted: str) -> str:
    return "FLOWLOG_" + re.sub(r"[^A-Z0-9]", "_", dotted.upper())


ENV_ALIASES = {"FLOWLOG_STORE": "store.dsn"}


def _check_source_filters(source: SourceConfig) -> None:
    """The verdicts Hubble knows; and the filters only where Hubble's server applies them."""
    if source.verdicts:
        from .api.flow import flow_pb2
        known = flow_pb2.Verdict.keys()
        unknown = [v for v in source.verdicts if v.upper() not in known]
        if unknown:
            raise ConfigError(f"source.verdicts: {', '.join(unknown)}: no such verdict (Hubble's are "
                              f"{', '.join(known)})")
    if (source.namespaces or source.verdicts) and source.address.startswith(FILE_SCHEME):
        raise ConfigError("source.namespaces, source.verdicts: Hubble's server applies them to a stream; exporter "
                          "files hold what the exporter's own filters let through (hubble-export-allowlist, "
                          "hubble-export-denylist): set those instead")


def _check_serve_tls(tls: TLSConfig) -> None:
    """`flowlog serve` serves TLS with cert_file and key_file, and requires client
    certificates with ca_file as well. Anything else asked of it without a certificate
    would be served in plaintext, with no client authentication: refused."""
    if tls.cert_file and tls.key_file:
        return
    asked = [f"serve.tls.{name}" for name in ("enabled", "ca_file", "cert_file", "key_file", "server_name")
             if getattr(tls, name)]
    if asked:
        raise ConfigError(f"{', '.join(asked)}: serving TLS needs serve.tls.cert_file and serve.tls.key_file; "
                          "without both it would serve plaintext")


def load(path: str | None = None, env: dict[str, str] | None = None,
         overrides: dict[str, typing.Any] | None = None) -> Config:
    """Build the config from file, environment and flag overrides (dotted keys).

    Override values that are strings are parsed like environment values."""
    tree: dict = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            # Where, and what is wrong, but not the line itself: it may hold a password.
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or 'syntax error'}") \
                from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    env = os.environ if env is None else env
    known = set(leaf_keys())
    for name, dotted in ENV_ALIASES.items():
        if env.get(name):
            _set_dotted(tree, dotted, _Text(env[name]))
    for dotted in known:
        if env_name(dotted) in env:
            _set_dotted(tree, dotted, _Text(env[env_name(dotted)]))
    for dotted, value in (overrides or {}).items():
        if dotted not in known:
            raise ConfigError(f"unknown key {dotted}")
        if value is not None:
            _set_dotted(tree, dotted, _Text(value) if isinstance(value, str) else value)
    config = _build(Config, tree)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", config.store.database):
        raise ConfigError(f"store.database: {config.store.database!r} is not a plain identifier")
    dsn = urlsplit(config.store.dsn)
    if dsn.scheme == "chdb" and dsn.path != "memory" and not (dsn.path.startswith("/") and dsn.netloc == ""):
        raise ConfigError(f"store.dsn: {mask_dsn(config.store.dsn)}: the embedded store's directory must be an "
                          "absolute path, chdb:///abs/dir")
    if dsn.scheme in ("http", "https", "clickhouse", "clickhouses"):
        server = urlsplit(without_userinfo(config.store.dsn))  # a raw "#" or "/" in a password is no path
        try:
            server.port  # noqa: B018  (urlsplit checks the port when asked for it)
        except ValueError:
            raise ConfigError(f"store.dsn: {mask_dsn(config.store.dsn)}: the port is not a number") from None
        if server.port in (9000, 9440):
            raise ConfigError(f"store.dsn: {mask_dsn(config.store.dsn)}: {server.port} is ClickHouse's native "
                              "protocol port; flowlog speaks HTTP (8123, or 8443 with TLS)")
        if not server.hostname:  # clickhouse-connect would go to http://localhost:8123, even from https://
            raise ConfigError(f"store.dsn: {mask_dsn(config.store.dsn)}: no host (http(s)://user@host:8123)")
    _check_source_filters(config.source)
    _check_address("metrics.address", config.metrics.address, empty_allowed=True)
    _check_serve_tls(config.serve.tls)
    _check_address("serve.listen", config.serve.listen)
    _check_address("serve.metrics_address", config.serve.metrics_address, empty_allowed=True)
    if config.serve.follow_window_s <= config.serve.follow_delay_s:
        raise ConfigError(f"serve.follow_window_s: expected more than serve.follow_delay_s "
                          f"({config.serve.follow_delay_s}), got {config.serve.follow_window_s}")
    if config.source.reconnect_max_s < config.source.reconnect_initial_s:
        raise ConfigError("source.reconnect_max_s: expected at least source.reconnect_initial_s")
    if config.store.retry_max_s < config.store.retry_initial_s:
        raise ConfigError("store.retry_max_s: expected at least store.retry_initial_s")
    if config.store.derive not in ("ingester", "store"):
        raise ConfigError(f"store.derive: expected ingester or store, got {config.store.derive!r}")
    if config.store.derive == "store" and config.metrics.l7:
        raise ConfigError("store.derive = store: the L7 metrics (metrics.l7) count the rows the ingester fills, "
                          "which it then does not; set metrics.l7 = false (Hubble's own http and dns metrics "
                          "count the same flows)")
    if config.store.sharding not in ("node", "random"):
        raise ConfigError(f"store.sharding: expected node or random, got {config.store.sharding!r}")
    if config.visibility.mode not in ("observe", "enforce"):
        raise ConfigError(f"visibility.mode: expected observe or enforce, got {config.visibility.mode!r}")
    if config.source.resume_margin_s < 0:
        raise ConfigError(f"source.resume_margin_s: expected a number of seconds, at least 0, got "
                          f"{config.source.resume_margin_s}")
    if config.source.node_idle_s < config.source.resume_margin_s:
        # A node quiet for less than the margin may still have flows in Relay's sort buffer.
        raise ConfigError(f"source.node_idle_s: expected at least source.resume_margin_s "
                          f"({config.source.resume_margin_s}), got {config.source.node_idle_s}")
    config.source.files  # raises on a file:// address that names no absolute path
    if config.log.format not in ("plain", "json"):
        raise ConfigError(f"log.format: expected plain or json, got {config.log.format!r}")
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level: expected debug, info, warning or error, got {config.log.level!r}")
    return config


def _check_address(key: str, address: str, empty_allowed: bool = False) -> None:
    """HOST:PORT (HOST may be empty: every address), PORT 0 to 65535."""
    if not address and empty_allowed:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {address!r} is no HOST:PORT with a port from 0 to 65535")


def to_masked_dict(config: Config) -> dict:
    """The effective config as plain data, with every secret masked."""
    data = dataclasses.asdict(config)
    data["store"]["dsn"] = mask_dsn(config.store_dsn)
    if data["store"]["password"]:
        data["store"]["password"] = MASK
    return data


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_masked_dict(config), sort_keys=False)


__all__ = ["Config", "ConfigError", "load", "dump_yaml", "leaf_keys", "env_name", "SENSITIVE_HEADERS",
           "DEFAULT_SOURCE"]
