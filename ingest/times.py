"""Times as people and ClickHouse write them: ISO 8601 in, ClickHouse's DateTime64 text out,
and durations like 90s, 1h30m or 7d. Nanoseconds since the epoch in between."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
                   r"\s*(Z|[+-]\d{2}:?\d{2})?", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TIME_EXAMPLE = "2021-10-04, 2021-10-04T14:28:38Z or 2021-10-04 14:28:38.735173594+02:00"
DURATION_EXAMPLE = "90s, 15m, 1h, 1h30m, 7d or 2w"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 / RFC 3339 time; without a zone, UTC.
    ValueError if it is none, or outside DateTime64's years 1900 to 2299."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if not 1900 <= int(year) <= 2299:
        raise ValueError(text)
    seconds = calendar.timegm((int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                               int(second or 0), 0, 0, 0))
    # timegm accepts 2021-02-30; a round trip refuses it.
    if datetime.fromtimestamp(seconds, timezone.utc).timetuple()[:6] != (
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)):
        raise ValueError(text)
    if zone and zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def format_time(ns: int, digits: int = 9) -> str:
    """'YYYY-MM-DD HH:MM:SS[.fraction]' in UTC, as ClickHouse parses and prints DateTime64."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{fraction:09d}"[:len(text) + 1 + digits] if digits else text


def parse_duration(text: str) -> int:
    """Nanoseconds in a duration like 90s, 15m, 1h, 1h30m, 7d, 2w; ValueError if it is none."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(a + b for a, b in parts) != text:
        raise ValueError(text)
    return int(sum(float(amount) * _SECONDS[unit] for amount, unit in parts) * 1_000_000_000)
