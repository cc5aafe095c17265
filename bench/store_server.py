"""A ClickHouse store in a process of its own, reached over ClickHouse's HTTP interface.

    python -m bench.store_server DIR [LOG] [--discard]  # prints {"port": N} once it listens
    with StoreServer(workdir) as store: ...  # the same, as a child process; store.dsn

With LOG, the first line of every statement it runs is appended to that file (and the
body's Content-Encoding, in brackets). With
--discard, it answers every insert but the schema's version rows at once and stores
nothing: the ingester's own ceiling, with no store on the same cores (on a node the
store is a server elsewhere). Lookups still run on the engine and find nothing, as on
a first run.

The bench measures what the ingester on a node pays with the store elsewhere, as it is in
production. No modern ClickHouse server can be installed here, so this stand-in speaks
the part of the HTTP interface clickhouse-connect uses and runs every statement on the
real engine (chdb, in this process, on the directory DIR): queries with their `param_*`
bound by the engine and the output format the client asked for, inserts (the body
`INSERT ... FORMAT Native` + the block, compressed as Content-Encoding says) through
`INSERT ... FROM INFILE`. Errors come back as a server's do: status 500, `Code: N.
DB::Exception: ...` and the X-ClickHouse-Exception-Code header. It is a bench tool, not
a server: one statement at a time, no users, no sessions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from . import procstat

ROOT = Path(__file__).resolve().parent.parent

# URL parameters that steer the HTTP exchange, not the statement.
HTTP_ONLY = {"query", "database", "query_id", "session_id", "session_timeout", "session_check", "compress",
             "decompress", "enable_http_compression", "send_progress_in_http_headers",
             "http_headers_progress_interval_ms", "wait_end_of_query", "default_format", "user", "password",
             "quota_key", "buffer_size", "cancel_http_readonly_queries_on_client_close",
             "output_format_arrow_string_as_string", "client_protocol_version"}
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<format>\w+)\s*$", re.I | re.S)
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
_ERROR_CODE = re.compile(r"Code: (\d+)")
# The one table a discarding stand-in still stores: the ingester reads the schema's version from it.
_KEPT_WHEN_DISCARDING = "schema_migrations"


def _decompress(data: bytes, encoding: str | None) -> bytes:
    """The body as sent: clickhouse-connect compresses inserts with lz4 unless told otherwise."""
    if not encoding or encoding == "identity":
        return data
    if encoding == "lz4":
        import lz4.frame
        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported Content-Encoding {encoding}")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _form(body: bytes, boundary: str) -> dict[str, str]:
    """The fields of a multipart/form-data body (clickhouse-connect sends no files in one)."""
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        headers, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', headers)
        if name:
            fields[name[1].decode()] = value.removesuffix(b"\r\n").decode()
    return fields


class Store:
    """The engine, one statement at a time (chdb's connection is not for concurrent use)."""

    def __init__(self, path: str):
        import chdb
        self.connection = chdb.connect(path)
        self.lock = threading.Lock()

    def execute(self, sql: str, params: dict, settings: dict, database: str | None) -> tuple[bytes, str]:
        with self.lock:
            if database:
                self.connection.query(f"USE `{database}`", "TabSeparated")
            applied = self._apply(settings)
            try:
                fmt = (_FORMAT.search(sql) or [None, "TabSeparated"])[1]
                result = self.connection.query(sql, fmt, params=params)
                return (result.bytes() if hasattr(result, "bytes") else bytes(result)), fmt
            finally:
                self._apply({name: "DEFAULT" for name in applied})

    def insert(self, target: str, fmt: str, data: bytes, settings: dict, database: str | None) -> int:
        with tempfile.NamedTemporaryFile(suffix="." + fmt.lower(), dir=os.environ.get("TMPDIR")) as block:
            block.write(data)
            block.flush()
            clause = ", ".join(f"{name} = {_quote(value)}" for name, value in settings.items())
            sql = f"INSERT INTO {target} FROM INFILE {_quote(block.name)}" \
                  f"{' SETTINGS ' + clause if clause else ''} FORMAT {fmt}"
            with self.lock:
                if database:
                    self.connection.query(f"USE `{database}`", "TabSeparated")
                result = self.connection.query(sql, "TabSeparated")
            return result.rows_read() if hasattr(result, "rows_read") else 0

    def _apply(self, settings: dict) -> list[str]:
        for name, value in settings.items():
            self.connection.query(f"SET {name} = {value if value == 'DEFAULT' else _quote(value)}", "TabSeparated")
        return list(settings)


def handler(store: Store, log_path: str | None = None, discard: bool = False):
    log = open(log_path, "a", buffering=1) if log_path else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if urlsplit(self.path).path == "/ping":
                return self._answer(200, b"Ok.\n")
            self._statement(b"")

        def do_POST(self):
            self._statement(self._body())

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":  # a streamed insert is chunked
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)

        def _statement(self, body: bytes):
            url = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            database = url.get("database")
            params = {k[6:]: v for k, v in url.items() if k.startswith("param_")}
            settings = {k: v for k, v in url.items()
                        if k not in HTTP_ONLY and not k.startswith("param_") and _SETTING_NAME.match(k)}
            encoding = self.headers.get("Content-Encoding")
            try:
                body = _decompress(body, encoding)
                if self.headers.get_content_type() == "multipart/form-data":  # long parameters travel as a form
                    form = _form(body, self.headers.get_boundary())
                    params.update({k[6:]: v for k, v in form.items() if k.startswith("param_")})
                    url["query"], body = form.get("query", ""), b""
                head = url.get("query", "")
                if not head:  # the statement is the body's first line, an insert's block the rest
                    head, _, body = body.partition(b"\n") if body.lstrip()[:6].upper() == b"INSERT" \
                        else (body, b"", b"")
                    head = head.decode()
                if log:
                    log.write(head.strip().splitlines()[0][:300] + (f" [{encoding}]" if encoding else "") + "\n")
                insert = _INSERT.match(head)
                if insert and discard and _KEPT_WHEN_DISCARDING not in insert["target"]:
                    return self._answer(200, b"", {"X-ClickHouse-Summary": json.dumps(
                        {"written_rows": "0", "written_bytes": str(len(body))})})
                if insert:
                    rows = store.insert(insert["target"], insert["format"], body, settings, database)
                    return self._answer(200, b"", {"X-ClickHouse-Summary": json.dumps(
                        {"written_rows": str(rows), "written_bytes": str(len(body))})})
                sql = head + ("\n" + body.decode() if body else "")
                answer, fmt = store.execute(sql, params, settings, database)
                self._answer(200, answer, {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": "UTC"})
            except Exception as err:  # the client shows a server's error text; so does this
                text = str(err)
                code = (_ERROR_CODE.search(text) or [None, "1001"])[1]
                if not text.startswith("Code:"):
                    text = f"Code: {code}. DB::Exception: {text}"
                self._answer(500, text.encode(), {"X-ClickHouse-Exception-Code": code})

        def _answer(self, status: int, body: bytes, headers: dict | None = None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


class StoreServer:
    """This module's server as a child process of the bench."""

    def __init__(self, directory: Path, data: Path | None = None, discard: bool = False):
        """directory/statements.log gets the first line of every statement; the engine's data
        is directory/store unless `data` names a store made before; discard: see --discard."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.statements = directory / "statements.log"
        self._log = open(directory.parent / f"{directory.name}.log", "w")
        # Run in its directory: the engine caches a protobuf schema given as text (an
        # insert into flow_input) under its working directory, as a server under its own.
        self.process = subprocess.Popen([sys.executable, "-m", "bench.store_server", str(data or directory / "store"),
                                         str(self.statements)] + (["--discard"] if discard else []),
                                        cwd=directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                        stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self._log.close()
            raise RuntimeError(f"the store server exited {self.process.returncode}: "
                               f"{(directory.parent / f'{directory.name}.log').read_text()[-2000:]}")
        self.dsn = f"http://127.0.0.1:{json.loads(line)['port']}"

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.process.pid)

    def __enter__(self) -> "StoreServer":
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def main(argv: list[str]) -> int:
    discard = "--discard" in argv
    argv = [a for a in argv if a != "--discard"]
    store = Store(argv[0])
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(store, argv[1] if len(argv) > 1 else None, discard))
    server.daemon_threads = True
    print(json.dumps({"port": server.server_port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
