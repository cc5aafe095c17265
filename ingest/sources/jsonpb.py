"""Hubble's JSON (`hubble observe -o jsonpb`, exporter files) into our protobuf messages, fast.

protobuf's `json_format.ParseDict` walks every field in Python and turns about 4,000
flows a second into messages. Most of a flow needs no conversion at all, since the
message constructors take nested dicts, repeated lists and enum names as they are.
So a plan, worked out once per message type from its descriptor, names only the
fields that do need converting: Timestamps (RFC 3339 strings), 64-bit integers (JSON
strings), wrapper types, and the bool fields whose leniency differs. The result is
the same message (tested field for field). Anything the plan does not cover, or any
input it doubts, goes to `json_format.ParseDict`, which also words the errors. Fields
this build does not know, and enum values by a name it does not know, are left out and
named, for the caller to count; nothing this build knows is changed by them.
"""

from __future__ import annotations

import calendar
import re
import time

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_WRAPPERS = {"google.protobuf.BoolValue": bool, "google.protobuf.Int32Value": int,
             "google.protobuf.UInt32Value": int, "google.protobuf.Int64Value": int,
             "google.protobuf.UInt64Value": int, "google.protobuf.StringValue": str}


class _Doubt(Exception):
    """The fast route is not sure; ParseDict decides."""


_MINUTES: dict[str, int] = {}  # "2025-03-04T09:00" -> its Unix time
_MINUTES_KEPT = 100_000  # about ten weeks of minutes
_UTC_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d):([0-5]\d)(?:\.(\d{1,9}))?Z")


def _timestamp(value) -> dict | Timestamp:
    """Hubble writes UTC with a Z and up to 9 digits of fraction; that form is split here
    (Timestamp.FromJsonString takes 6.7 µs, two a flow, most of it in strptime), the
    date and minute once per minute. Any other form goes to FromJsonString."""
    if not isinstance(value, str):
        raise _Doubt
    match = _UTC_TIME.fullmatch(value)
    if match:
        minute = _MINUTES.get(match[1])
        if minute is None:
            minute = _minute(match[1])
        fraction = match[3]
        return {"seconds": minute + int(match[2]), "nanos": int(fraction.ljust(9, "0")) if fraction else 0}
    stamp = Timestamp()
    try:
        stamp.FromJsonString(value)
    except ValueError:
        raise _Doubt from None
    return stamp


def _minute(text: str) -> int:
    if text.startswith("0000"):
        raise _Doubt  # Timestamp's range begins in year 1
    try:
        minute = calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M"))
    except ValueError:
        raise _Doubt from None
    if len(_MINUTES) >= _MINUTES_KEPT:
        _MINUTES.clear()
    _MINUTES[text] = minute
    return minute


def _int64(value) -> int:
    if isinstance(value, bool):
        raise _Doubt
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise _Doubt


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise _Doubt
    return value


def _wrapper(kind):
    def convert(value):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _Doubt
        return {"value": value}
    return convert


def _doubt(value):
    raise _Doubt


_plans: dict[str, dict] = {}


def _plan(descriptor) -> dict:
    """field name -> (converter, repeated), for the fields of this message type that need a
    conversion or a check the constructors do not make (they take any iterable for a
    repeated field, any mapping for a message, and ints for bools)."""
    plan = _plans.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = _plans[descriptor.full_name] = {}
    for field in descriptor.fields:
        convert = _same
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            name = field.message_type.full_name
            if name == "google.protobuf.Timestamp":
                convert = _timestamp
            elif name in _WRAPPERS:
                convert = _wrapper(_WRAPPERS[name])
            elif name.startswith("google.protobuf.") or field.message_type.GetOptions().map_entry:
                convert = _doubt
            else:
                convert = _message(field.message_type)
        elif field.type in _INT64:
            convert = _int64
        elif field.type == FieldDescriptor.TYPE_BOOL:
            convert = _bool
        elif field.type == FieldDescriptor.TYPE_ENUM:
            convert = _enum
        elif field.type == FieldDescriptor.TYPE_BYTES:
            convert = _doubt
        if convert is not _same or field.is_repeated:
            plan[field.name] = (convert, field.is_repeated)
    return plan


def _same(value):
    return value


def _enum(value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Doubt
    return value


def _message(descriptor):
    def convert(value):
        if not isinstance(value, dict):
            raise _Doubt
        return _convert(dict(value), _plan(descriptor))
    return convert


def _convert(data: dict, plan: dict) -> dict:
    for name, (convert, repeated) in plan.items():
        value = data.get(name)
        if value is None:
            continue
        if repeated:
            if not isinstance(value, list):
                raise _Doubt
            if convert is not _same:
                data[name] = [convert(item) for item in value]
        else:
            data[name] = convert(value)
    return data


def parse(data: dict, message_class, unknown: list[str] | None = None):
    """The message `data` (proto3 JSON, already loaded) describes; raises json_format.ParseError.
    With a list for unknown, what this build does not know (a newer Cilium's fields, or
    enum values by a name it has not) is left out, and named in that list: a field by its
    path, an enum value as path=NAME."""
    try:
        converted = _convert(dict(data), _plan(message_class.DESCRIPTOR))
        return message_class(**converted)
    except (_Doubt, TypeError, ValueError):
        pass
    if unknown is not None:
        data = _known_only(data, message_class.DESCRIPTOR, "", unknown)
    return json_format.ParseDict(data, message_class())


_known: dict[str, dict] = {}


def _fields(descriptor) -> dict:
    """Field name and JSON name -> field, of one message type."""
    known = _known.get(descriptor.full_name)
    if known is None:
        known = _known[descriptor.full_name] = {name: field for field in descriptor.fields
                                                for name in (field.name, field.json_name)}
    return known


def has_a_field(data: dict, descriptor) -> bool:
    """Whether any key of data names a field of the message."""
    known = _fields(descriptor)
    return any(key in known for key in data)


def _known_only(data: dict, descriptor, prefix: str, unknown: list[str]) -> dict:
    """data without the keys that name no field of the message and without enum values
    named by a name the enum has not, in nested messages too; each appended to unknown."""
    known = _fields(descriptor)
    kept = {}
    for key, value in data.items():
        field = known.get(key)
        if field is None:
            unknown.append(prefix + key)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM:
            names = field.enum_type.values_by_name
            values = value if field.is_repeated and isinstance(value, list) else [value]
            odd = [v for v in values if isinstance(v, str) and v not in names]
            unknown += [f"{prefix}{key}={name}" for name in odd]
            if odd:
                if not field.is_repeated:
                    continue
                value = [v for v in value if v not in odd]
        elif (field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry
              and not field.message_type.full_name.startswith("google.protobuf.")):
            if field.is_repeated and isinstance(value, list):
                value = [_known_only(item, field.message_type, f"{prefix}{key}.", unknown)
                         if isinstance(item, dict) else item for item in value]
            elif isinstance(value, dict):
                value = _known_only(value, field.message_type, f"{prefix}{key}.", unknown)
        kept[key] = value
    return kept
