"""The flows' input table: ClickHouse derives the flow tables from the received flows.

With `store.derive = "store"` the ingester does not fill the typed tables' rows itself.
It sends each L7 flow once, as a `FlowInput` protobuf message (`INSERT ... FORMAT
Protobuf`, the schema travelling with the insert): the redacted `flow.Flow` bytes, which
ClickHouse parses into `flow_input.flow`, the same bytes again for `l7_audit.flow`, and
the values that need the ingester's state or rules (the flow's time and ids, the URL as
stored, the headers kept, the DNS name of the server). `flow_input` is a Null table:
three materialized views fill `l7_audit`, `http_flows` and `dns_flows` from each
inserted block, and the rollups' views follow from those.

Everything here is derived: the protobuf schema from the `.proto` descriptors (field
numbers as Cilium's) and `PARSED_FLOW`, the views' select lists from the target tables'
column names and `DERIVED`. `tests/test_flow_input.py` stores the fixtures both ways and
compares every column.
"""

from __future__ import annotations

from dataclasses import dataclass

import lz4.frame
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from ..api.flow import flow_pb2
from .schema import DNS_FLOWS, HTTP_FLOWS, L7_AUDIT, Cluster, Column, Table, _quote, on_cluster

_PORTS = {"source_port": "UInt32", "destination_port": "UInt32"}
_ENDPOINT = {"identity": "UInt32", "namespace": "String", "labels": "Array(String)", "pod_name": "String",
             "workloads": [{"name": "String"}]}
# The fields of flow.Flow the views read. An enum is read as its number, so that one this
# build does not know (a newer Cilium) is kept as its digits, as the ingester keeps it;
# ports, status and rcode as Hubble's uint32 (the ingester refuses a flow with one above
# 65535 before it is sent).
PARSED_FLOW = {
    "verdict": "Int32",
    "IP": {"source": "String", "destination": "String"},
    "l4": {"TCP": _PORTS, "UDP": _PORTS, "SCTP": _PORTS},
    "source": _ENDPOINT,
    "destination": _ENDPOINT,
    "l7": {"type": "Int32", "latency_ns": "UInt64",
           "dns": {"query": "String", "ips": "Array(String)", "ttl": "UInt32", "cnames": "Array(String)",
                   "observation_source": "String", "rcode": "UInt32", "qtypes": "Array(String)",
                   "rrtypes": "Array(String)"},
           "http": {"code": "UInt32", "method": "String", "protocol": "String"}},
    "traffic_direction": "Int32",
    "source_names": "Array(String)",
    "destination_names": "Array(String)",
}


def _tuple_type(spec: dict) -> str:
    parts = []
    for name, kind in spec.items():
        if isinstance(kind, dict):
            kind = _tuple_type(kind)
        elif isinstance(kind, list):
            kind = f"Array({_tuple_type(kind[0])})"
        parts.append(f"{name} {kind}")
    return f"Tuple({', '.join(parts)})"


# What the ingester sends beside the flow, field 3 on (fields 1 and 2 are the flow's bytes).
# is_reply: 0 when Hubble did not say, else 1 + the value.
COMPUTED = (
    Column("time", "Int64", comment="the flow's time in ns (the response's when the flow has none)"),
    Column("node", "String"),
    Column("flow_id", "String", comment="the flow tables' id: a UUID's text or 32 hex digits"),
    Column("audit_id", "String", comment="l7_audit's id: Hubble's uuid as it came, else the content hash"),
    Column("type", "String", comment="HTTP, DNS, KAFKA or empty"),
    Column("l7_type", "String"),
    Column("aggregate_count", "UInt32"),
    Column("is_reply", "UInt8"),
    Column("url", "String"),
    Column("host", "String"),
    Column("header_names", "Array(String)"),
    Column("header_values", "Array(String)"),
    Column("dst_dns_name", "String"),
)


@dataclass(frozen=True, eq=False)
class InputTable(Table):
    """A Null table whose inserted blocks materialized views turn into rows of other tables."""
    # (table, WHERE over the input or "", the expressions that differ from DERIVED's)
    targets: tuple[tuple[Table, str, dict[str, str]], ...] = ()

    def create_sql(self, database: str, cluster: Cluster | None = None, columns=None, settings=None) -> str:
        body = ",\n    ".join(c.ddl() for c in (self.columns if columns is None else columns))
        return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}`{on_cluster(cluster)}\n(\n    {body}\n)\n"
                f"ENGINE = Null\nCOMMENT {_quote(self.comment)}")

    def view_name(self, target: Table) -> str:
        return f"{target.name}_from_input"

    def view_sqls(self, database: str, cluster: Cluster | None = None) -> list[str]:
        """A view per target; on a cluster it writes to the Distributed table, which sends
        each row to its shard."""
        statements = []
        for target, where, own in self.targets:
            derived = {**DERIVED, **own}
            select = ",\n    ".join(f"{derived[name]} AS `{name}`" for name in target.column_names)
            condition = f"\nWHERE {where}" if where else ""
            statements.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{self.view_name(target)}`"
                              f"{on_cluster(cluster)} TO `{database}`.`{target.name}`\n"
                              f"AS SELECT\n    {select}\nFROM `{database}`.`{self.name}`{condition}")
        return statements


FLOW_INPUT = InputTable(
    name="flow_input",
    comment="Received L7 flows on their way to l7_audit, http_flows and dns_flows (Null engine: holds nothing)",
    columns=(Column("flow", _tuple_type(PARSED_FLOW)), Column("flow_bytes", "String")) + COMPUTED,
    order_by="",
    id_column="audit_id",
    partition_by="",
    ttl_key="",
    engine="Null",
    targets=((L7_AUDIT, "", {"flow_id": "audit_id"}), (HTTP_FLOWS, "type = 'HTTP'", {}),
             (DNS_FLOWS, "type = 'DNS'", {})),
)


_TYPE_AT = FLOW_INPUT.column_names.index("type")
_TYPED = {"HTTP": HTTP_FLOWS.name, "DNS": DNS_FLOWS.name}


def derived_counts(input_rows: list[tuple]) -> dict[str, int]:
    """The rows each table gets from these rows of the input table, by table name."""
    counts = {L7_AUDIT.name: len(input_rows)}
    for row in input_rows:
        typed = _TYPED.get(row[_TYPE_AT])
        if typed is not None:
            counts[typed] = counts.get(typed, 0) + 1
    return counts


def _names(enum, number: str) -> str:
    """An enum number as the ingester names it: the name, else its digits."""
    values = enum.DESCRIPTOR.values
    numbers = ", ".join(str(v.number) for v in values)
    names = ", ".join(f"'{v.name}'" for v in values)
    return f"transform({number}, [{numbers}], [{names}], toString({number}))"


# Kubernetes pod-name suffixes use this alphabet (k8s.io/apimachinery rand.SafeEncodeString).
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
POD_SUFFIXES = (
    f"^(.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$",  # Deployment: <name>-<rs hash>-<pod>
    f"^(.+)-{_SAFE}{{5}}$",                  # DaemonSet, Job, ReplicaSet
    "^(.+)-[0-9]+$",                         # StatefulSet
)
WORKLOAD_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:app=", "k8s:k8s-app=")


def _workload(side: str) -> str:
    """decoder.workload_of: Hubble's workloads, else the pod name without its generated
    suffixes, else the first app label's value."""
    endpoint, pod = f"flow.{side}", f"flow.{side}.pod_name"
    patterns = ", ".join(f"match({pod}, '{p}'), extract({pod}, '{p}')" for p in POD_SUFFIXES)
    is_app = " OR ".join(f"startsWith(l, '{prefix}')" for prefix in WORKLOAD_LABELS)
    label = f"arrayFirst(l -> {is_app}, {endpoint}.labels)"
    value = ", ".join(f"startsWith({label}, '{prefix}'), substring({label}, {len(prefix) + 1})"
                      for prefix in WORKLOAD_LABELS)
    return (f"multiIf(notEmpty({endpoint}.workloads), {endpoint}.workloads[1].name, {patterns}, "
            f"{pod} != '', {pod}, {value}, '')")


def _port(side: str) -> str:
    return f"toUInt16(flow.l4.TCP.{side}_port + flow.l4.UDP.{side}_port + flow.l4.SCTP.{side}_port)"


# DNS RCODEs by number (RFC 1035, 2136, 6895), the names dig prints.
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
               6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
               16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
               22: "BADTRUNC", 23: "BADCOOKIE"}


def _rcode_name() -> str:
    numbers = ", ".join(map(str, RCODE_NAMES))
    names = ", ".join(f"'{n}'" for n in RCODE_NAMES.values())
    rcode = "flow.l7.dns.rcode"
    return (f"if(flow.l7.type = {flow_pb2.RESPONSE}, transform({rcode}, [{numbers}], [{names}], "
            f"concat('RCODE', toString({rcode}))), '')")


# Each flow table column by name, as an expression over flow_input.
DERIVED = {
    "time": "fromUnixTimestamp64Nano(time, 'UTC')",
    "node": "node",
    "flow_id": "toUUID(flow_id)",  # l7_audit's is audit_id: FLOW_INPUT.targets
    "type": "type",
    "l7_type": "l7_type",
    "flow": "flow_bytes",
    "aggregate_count": "aggregate_count",
    "verdict": _names(flow_pb2.Verdict, "flow.verdict"),
    "traffic_direction": _names(flow_pb2.TrafficDirection, "flow.traffic_direction"),
    "is_reply": "if(is_reply = 0, NULL, is_reply = 2)",
    "latency_ns": "flow.l7.latency_ns",
    "method": "flow.l7.http.method",
    "url": "url",
    "host": "host",
    "protocol": "flow.l7.http.protocol",
    "status_code": "toUInt16(flow.l7.http.code)",
    "headers": "mapFromArrays(header_names, header_values)",
    "dst_dns_name": "dst_dns_name",
    "query": "flow.l7.dns.query",
    "qtypes": "flow.l7.dns.qtypes",
    "rcode": "toUInt16(flow.l7.dns.rcode)",
    "rcode_name": _rcode_name(),
    "ips": "flow.l7.dns.ips",
    "ttl": "flow.l7.dns.ttl",
    "cnames": "flow.l7.dns.cnames",
    "rrtypes": "flow.l7.dns.rrtypes",
    "observation_source": "flow.l7.dns.observation_source",
}
for _side, _field in (("src", "source"), ("dst", "destination")):
    DERIVED.update({
        f"{_side}_namespace": f"flow.{_field}.namespace", f"{_side}_pod": f"flow.{_field}.pod_name",
        f"{_side}_workload": _workload(_field), f"{_side}_identity": f"flow.{_field}.identity",
        f"{_side}_ip": f"flow.IP.{_field}", f"{_side}_port": _port(_field),
        f"{_side}_labels": f"flow.{_field}.labels", f"{_side}_names": f"flow.{_field}_names"})


# --- the protobuf schema -----------------------------------------------------------------

_PROTO_TYPES = {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
                FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_UINT64: "uint64",
                FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_INT64: "int64",
                FieldDescriptor.TYPE_ENUM: "int32", FieldDescriptor.TYPE_BOOL: "bool"}
_COLUMN_TYPES = {"String": "bytes", "Array(String)": "bytes", "Int64": "int64", "UInt32": "uint32", "UInt8": "uint32"}


def _messages(descriptor, spec: dict, name: str, out: list[str]) -> None:
    lines = []
    for field_name, kind in spec.items():
        field = descriptor.fields_by_name[field_name]
        repeated = "repeated " if field.is_repeated else ""
        if isinstance(kind, (dict, list)):
            nested = f"{name}_{field_name}"
            _messages(field.message_type, kind if isinstance(kind, dict) else kind[0], nested, out)
            lines.append(f"  {repeated}{nested} {field_name} = {field.number};")
        else:
            lines.append(f"  {repeated}{_PROTO_TYPES[field.type]} {field_name} = {field.number};")
    out.append(f"message {name} {{\n" + "\n".join(lines) + "\n}")


def protobuf_schema() -> str:
    """The schema `FORMAT Protobuf` reads a FlowInput message with: the part of flow.Flow
    the views read (Cilium's field numbers; ClickHouse skips the other fields), then the
    computed values."""
    out = ['syntax = "proto3";']
    _messages(flow_pb2.Flow.DESCRIPTOR, PARSED_FLOW, "Flow", out)
    fields = ["  Flow flow = 1;", "  bytes flow_bytes = 2;"]
    for number, column in enumerate(COMPUTED, start=3):
        repeated = "repeated " if column.type.startswith("Array") else ""
        fields.append(f"  {repeated}{_COLUMN_TYPES[column.type]} {column.name} = {number};")
    out.append("message FlowInput {\n" + "\n".join(fields) + "\n}")
    return "\n".join(out) + "\n"


MESSAGE = "FlowInput"


# --- encoding the rows -------------------------------------------------------------------

def varint(value: int) -> bytes:
    """A protobuf varint (a length before each message of `FORMAT Protobuf`, a tag, a value)."""
    if value < 0:  # as protobuf writes a negative int64: its 64-bit two's complement
        value &= (1 << 64) - 1
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([n]) for n in range(0x80)]
# A row holds the flow's bytes, the same again, then the computed values (FLOW_INPUT's
# column order): each value's field tag, already a varint, and whether it is an integer.
_INTEGER_TYPES = frozenset(column_type for column_type, kind in _COLUMN_TYPES.items() if kind != "bytes")
_FIELDS = tuple((varint(number << 3 | (0 if column.type in _INTEGER_TYPES else 2)), column.type in _INTEGER_TYPES)
                for number, column in enumerate(FLOW_INPUT.columns, start=1))


# Rows encoded at a time into a body: the messages of 1,000 flows (about 2.7 MB) are the
# most of it uncompressed in memory at once.
_ROWS_PER_CHUNK = 1000
# Uncompressed bytes a body is read back in at a time.
_READ_BACK_BYTES = 1 << 20


def compressed_body(rows: list[tuple]) -> bytes:
    """The rows as an insert sends them (Content-Encoding: lz4) and a spool file keeps
    them: one lz4 frame of `encode`'s messages, a chunk of rows at a time. Each flow is
    in it twice; that and what repeats between flows compress 11 times on the bench's
    flows (20,000: 5.2 MB, where the rows marshalled take 31.6), for 1.7 µs a flow."""
    # With the frame's checksum a damaged spool file is refused (and recorded), not read
    # back as other values: 400 single-bit flips changed rows silently 247 times without.
    compressor = lz4.frame.LZ4FrameCompressor(content_checksum=True)
    parts = [compressor.begin()]
    for start in range(0, len(rows), _ROWS_PER_CHUNK):
        parts.append(compressor.compress(encode(rows[start:start + _ROWS_PER_CHUNK])))
    parts.append(compressor.flush())
    return b"".join(parts)


def rows_of_body(body: bytes) -> list[tuple]:
    """The rows a `compressed_body` holds, in FLOW_INPUT's column order (a list where the
    decoder may have left an empty tuple); decompressed a megabyte at a time, so that
    the rows and the whole uncompressed body are never in memory together. ValueError
    for a body cut short or followed by more, RuntimeError (lz4) for a damaged one."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    data = bytearray()
    pending = body
    rows: list[tuple] = []
    while not decompressor.eof:
        more = decompressor.decompress(pending, max_length=_READ_BACK_BYTES)
        if not more and not pending and decompressor.needs_input:
            raise ValueError("the body ends before its lz4 frame does")
        pending = b""
        data += more
        del data[:_read_messages(data, rows)]
    if data:
        raise ValueError("the body ends inside a message")
    if decompressor.unused_data:
        raise ValueError("the body goes on after its lz4 frame")
    return rows


def _read_messages(data: bytearray, rows: list[tuple]) -> int:
    """Appends the row of each whole message in data to rows; returns where the first
    message not whole yet begins."""
    read = _ROW_MESSAGE.FromString
    offset = 0
    while offset < len(data):
        try:
            length, start = _read_varint(data, offset)
        except IndexError:  # the length itself is cut
            break
        if start + length > len(data):
            break
        message = read(bytes(data[start:start + length]))
        offset = start + length
        flow = message.flow
        # Both fields were written from one object: read back, they are one again.
        values = [flow, flow if message.flow_bytes == flow else message.flow_bytes]
        for name, repeated in _COMPUTED_FIELDS:
            value = getattr(message, name)
            values.append(list(value) if repeated else value)
        rows.append(tuple(values))
    return offset


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _row_message_class():
    """FlowInput as the ingester wrote it, the flow as bytes (its wire format is the same
    as the parsed message's): what reads a body back into rows."""
    types = descriptor_pb2.FieldDescriptorProto
    kinds = {"Int64": types.TYPE_INT64, "UInt32": types.TYPE_UINT32, "UInt8": types.TYPE_UINT32,
             "String": types.TYPE_STRING, "Array(String)": types.TYPE_STRING}
    file = descriptor_pb2.FileDescriptorProto(name="flowlog_flow_input_rows.proto", package="flowlog_rows",
                                              syntax="proto3")
    message = file.message_type.add(name=MESSAGE)
    for number, column in enumerate(FLOW_INPUT.columns, start=1):
        message.field.add(name=column.name, number=number,
                          type=types.TYPE_BYTES if number <= 2 else kinds[column.type],
                          label=types.LABEL_REPEATED if column.type.startswith("Array") else types.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"flowlog_rows.{MESSAGE}"))


_ROW_MESSAGE = _row_message_class()
_COMPUTED_FIELDS = tuple((column.name, column.type.startswith("Array")) for column in COMPUTED)


def encode(rows: list[tuple]) -> bytes:
    """The rows as length-delimited FlowInput messages, what `FORMAT Protobuf` reads."""
    parts = []
    append = parts.append
    for row in rows:
        fields = []
        add = fields.append
        for (tag, is_integer), value in zip(_FIELDS, row):
            if not value:
                continue  # proto3 leaves out a default value
            if is_integer:
                add(tag)
                add(varint(value))
            elif type(value) is list:
                for item in value:
                    item = item.encode() if type(item) is str else item
                    add(tag)
                    add(varint(len(item)))
                    add(item)
            else:
                value = value.encode() if type(value) is str else value
                add(tag)
                add(varint(len(value)))
                add(value)
        message = b"".join(fields)
        append(varint(len(message)))
        append(message)
    return b"".join(parts)
