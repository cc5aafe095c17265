"""Redaction: credentials taken out of a flow once, before any copy of it is made.

The decoder hands every flow to `Redactor.flow` before it serializes the audit row or
reads a typed value, so the audit table, the typed rows, the spool, the dead letters and
any message quoting a value all see the same redacted flow. The settings are the
analogues of Cilium's own Hubble redaction (`hubble-redact-*`):

| here | Cilium | default |
|---|---|---|
| `http.headers_redact` | `hubble-redact-http-headers-deny` | Authorization, Cookie, ... |
| `http.headers_allow` (not `*`) | `hubble-redact-http-headers-allow` | `*` |
| `http.strip_userinfo` | `hubble-redact-http-userinfo` | on |
| `http.strip_query` | `hubble-redact-http-urlquery` | off |
| `http.query_params_redact`, `http.redact_query_values` | (none) | credential-like names |
| `kafka.redact_api_key` | `hubble-redact-kafka-apikey` | off |

A header value, or the value of a query parameter, becomes `[REDACTED]`; the userinfo
(`user:password@`) of a URL is removed; a stripped query goes with its fragment. What
Cilium already redacted (`HUBBLE_REDACTED`) is left as it is.

`text` scrubs input that is no message (a line that is not JSON, a summary string) by
pattern, as well as a pattern can: URL userinfo, credential-like query parameters,
`Bearer`/`Basic` tokens, and the values of sensitive headers written as JSON objects.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_plus

from ..api.flow import flow_pb2
from ..config import HTTPConfig, KafkaConfig

REDACTED = "[REDACTED]"
_CACHE_ENTRIES = 10_000
_CACHED_URL_CHARS = 512
_KEEP, _REDACT, _DROP, _URL = object(), object(), object(), object()
_UNKNOWN = object()


class Redactor:
    def __init__(self, http: HTTPConfig | None = None, kafka: KafkaConfig | None = None):
        http = http or HTTPConfig()
        kafka = kafka or KafkaConfig()
        self.denied_headers = frozenset(h.lower() for h in http.headers_redact)
        self.allowed_headers = None if "*" in http.headers_allow else frozenset(h.lower() for h in http.headers_allow)
        self.strip_userinfo = http.strip_userinfo
        self.strip_query = http.strip_query
        self.all_query_values = http.redact_query_values
        self.denied_params = frozenset(p.lower() for p in http.query_params_redact)
        self.kafka_api_key = kafka.redact_api_key
        self._urls: dict[str, str | None] = {}
        self._headers: dict[str, object] = {}  # header name as sent -> _KEEP, _REDACT or _DROP
        self._text = _TextScrubber(self)

    def flow(self, flow: flow_pb2.Flow) -> dict[str, str] | None:
        """Redacts the flow in place. For an HTTP flow, returns its headers as the typed row
        keeps them: the allowed ones (`http.headers_allow`), by name as sent, values
        redacted where they must be, repeated names joined with ", "."""
        l7 = flow.l7
        if l7.HasField("http"):
            http = l7.http
            kept: dict[str, str] = {}
            policies = self._headers
            for header in http.headers:
                key = header.key
                policy = policies.get(key)
                if policy is None:
                    policy = self._header_policy(key)
                if policy is _KEEP:
                    value = header.value
                elif policy is _URL:  # Referer, Location: a URL, redacted as one
                    value = header.value
                    redacted = self.url(value)
                    if redacted is not value:
                        header.value = value = redacted
                else:
                    header.value = value = REDACTED
                    if policy is _DROP:
                        continue
                kept[key] = f"{kept[key]}, {value}" if key in kept else value
            url = http.url
            redacted = self.url(url) if url else url
            if redacted is not url:
                http.url = redacted
            summary = flow.Summary
            # Hubble's summary of an HTTP flow quotes its URL: when that URL needed nothing
            # redacted, neither does the summary.
            if summary and (redacted is not url or url not in summary):
                flow.Summary = self.summary(summary)
            # Fields of a newer Cilium's HTTP record that this build cannot redact: not kept.
            http.DiscardUnknownFields()
            return kept
        if l7.HasField("kafka") and self.kafka_api_key and l7.kafka.api_key:
            if flow.Summary:
                flow.Summary = flow.Summary.replace(l7.kafka.api_key, REDACTED)
            l7.kafka.api_key = REDACTED
        # Other summaries (DNS names, L4 flags) hold nothing to redact.
        return None

    def _header_policy(self, key: str) -> object:
        """Keep, redact, or redact and leave out of the typed row: once per name as sent."""
        name = key.strip().lower()
        if self.allowed_headers is not None and name not in self.allowed_headers:
            policy = _DROP
        elif name in self.denied_headers:
            policy = _REDACT
        else:
            policy = _URL if name in _URL_HEADERS else _KEEP
        if len(self._headers) >= _CACHE_ENTRIES:
            self._headers.clear()
        self._headers[key] = policy
        return policy

    def header_redacted(self, name: str) -> bool:
        name = name.strip().lower()
        return name in self.denied_headers or (self.allowed_headers is not None and name not in self.allowed_headers)

    def url(self, url: str) -> str:
        """The URL redacted; the same object when nothing changed. Worked on as text, so a
        URL no parser takes is redacted all the same."""
        known = self._urls.get(url, _UNKNOWN)
        if known is not _UNKNOWN:
            return url if known is None else known
        redacted = url
        if "\t" in redacted or "\r" in redacted or "\n" in redacted:
            # As urlsplit (and so the typed row) reads it: these characters do not count.
            redacted = redacted.replace("\t", "").replace("\r", "").replace("\n", "")
        if self.strip_userinfo and "@" in redacted:
            redacted = _without_userinfo(redacted)
        if "?" in redacted or "#" in redacted or ";" in redacted:
            redacted = self._parameters(redacted)
        if len(url) <= _CACHED_URL_CHARS:  # the cache stays small in bytes; long URLs rarely repeat
            if len(self._urls) >= _CACHE_ENTRIES:
                self._urls.clear()
            self._urls[url] = None if redacted == url else redacted  # None: nothing to redact
        return url if redacted == url else redacted

    def _parameters(self, url: str) -> str:
        """The values of the parameters that must be redacted: in the query, in the fragment
        (OAuth's implicit flow puts tokens there) and in `;name=value` path parameters."""
        head, hash_, fragment = url.partition("#")
        base, question, query = head.partition("?")
        if ";" in base:
            base = _PATH_PARAMETER.sub(lambda m: self._parameter(m[0]), base)
        if self.strip_query:
            return base
        if question:
            query = _SEPARATED.sub(lambda m: self._parameter(m[0]), query)
        if hash_ and "=" in fragment:
            fragment = _SEPARATED.sub(lambda m: self._parameter(m[0]), fragment)
        return f"{base}{question}{query}{hash_}{fragment}"

    def _parameter(self, part: str) -> str:
        """`name=value` (a leading `;` kept) with its value redacted if it must be."""
        name, equals, value = part.partition("=")
        if equals and value and value != REDACTED and self.param_redacted(name.lstrip(";")):
            return f"{name}={REDACTED}"
        return part

    def param_redacted(self, name: str) -> bool:
        if self.all_query_values:
            return True
        # As servers read names: PHP, for one, takes "access token" and "access.token"
        # for access_token, and access_token[] for an array of them.
        name = unquote_plus(name).strip().lower().removesuffix("[]").replace(" ", "_").replace(".", "_")
        return name in self.denied_params

    def summary(self, text: str) -> str:
        """A flow's summary: each URL in it redacted as a flow's URL is, then the rest as text."""
        if "//" in text:
            text = _URL_IN_TEXT.sub(lambda match: self.url(match[0]), text)
        return self._text(text)

    def text(self, text: str) -> str:
        return self._text(text)


# Headers whose values are URLs, which may carry credentials of their own.
_URL_HEADERS = frozenset({"referer", "location", "content-location", "origin"})
# From the "//" on: a pattern that also took the scheme before it would rescan every run
# of word characters ("a.a.a...") from each of its starts, quadratic in a crafted URL.
_URL_IN_TEXT = re.compile(r"//[^\s\"'<>()]+")
_SEPARATED = re.compile(r"[^&;]+")
_PATH_PARAMETER = re.compile(r";[^;/?#]+")


def _without_userinfo(url: str) -> str:
    """url without the `user:password@` of its authority (between `//` and the next `/`,
    `?`, `#`). A password with a raw `/` (not percent-encoded) ends the authority early:
    one that cannot be a host (a port that is no number) before an `@` counts as userinfo."""
    scheme_end = url.find("//")
    if scheme_end < 0 or (scheme_end > 0 and url[scheme_end - 1] != ":"):
        return url  # no authority: "//" inside a path is no userinfo's
    start = scheme_end + 2
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found >= 0:
            end = min(end, found)
    at = url.rfind("@", start, end)
    if at < 0:
        authority = url[start:end]
        port = authority.rpartition(":")[2] if ":" in authority and not authority.startswith("[") else ""
        query_or_fragment = min([i for i in (url.find("?", start), url.find("#", start)) if i >= 0] or [len(url)])
        later = url.rfind("@", end, query_or_fragment)
        if port and not port.isdigit() and later >= 0:
            at = later
    return url if at < 0 else url[:start] + url[at + 1:]


class _TextScrubber:
    """Patterns for text that is no message (a line that is not JSON, a summary); built
    once from the redactor's settings. As good as patterns get, no better: they redact
    URL userinfo, `Bearer`/`Basic`/... tokens, the values after sensitive header or
    parameter names (as `Name: value`, `name=value` or JSON members, even cut short), and
    the values of sensitive headers written as {"key": ..., "value": ...} objects."""

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        headers = _alternatives(redactor.denied_headers)
        params = _alternatives(redactor.denied_params | {"credential"})
        self.userinfo = re.compile(r"(//)[^\s/?#\"'@]*@")
        value = r"(?!\[REDACTED\])(?:[^\"\\\r\n]|\\.)+"
        self.header_objects = re.compile(
            rf'(?i)("key"\s*:\s*"\s*(?:{headers})\s*"\s*,\s*"value"\s*:\s*")({value})')
        self.header_objects_reversed = re.compile(
            rf'(?i)("value"\s*:\s*")({value})("\s*,\s*"key"\s*:\s*"\s*(?:{headers})\s*")')
        self.header_lines = re.compile(rf'(?i)((?:^|[\s{{,"])(?:{headers})"?\s*:\s*"?)({value})')
        self.params = re.compile(r"(?i)((?:^|[?&;#\s,{\"])"
                                 + (r"[^=&#\s\"':]+" if redactor.all_query_values else f"(?:{params})")
                                 + r"(?:\[\])?\s*=\s*)(?!\[REDACTED\])([^&;#\s\"'\\,}]+)")
        # JSON members named as a parameter ("access_token": "..."), but not a header
        # object's own "key" member.
        members = _alternatives((redactor.denied_params | {"credential"}) - {"key"})
        self.members = re.compile(rf'(?i)("(?:{members})"\s*:\s*")({value})')
        self.tokens = re.compile(r"(?i)\b(bearer|basic|negotiate|digest|token)\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=:-]+")
        self.objects = re.compile(r"\{[^{}]*\}")
        # One pass that finds whether any of the above could apply: most text (a flow's
        # summary, say) holds none, and running them all costs 13 µs a flow.
        self.anything = re.compile("|".join([r"//[^\s/?#\"'@]*@", self.params.pattern.removeprefix("(?i)"),
                                             self.members.pattern.removeprefix("(?i)"),
                                             self.tokens.pattern.removeprefix("(?i)"), r'"key"',
                                             self.header_lines.pattern.removeprefix("(?i)")]), re.IGNORECASE)

    def __call__(self, text: str) -> str:
        if self.anything.search(text) is None:
            return text
        if self.redactor.strip_userinfo:
            text = self.userinfo.sub(r"\1", text)
        text = self.tokens.sub(rf"\1 {REDACTED}", text)
        if '"key"' in text:
            text = self.objects.sub(self._header_object, text)
            text = self.header_objects.sub(rf"\1{REDACTED}", text)
            text = self.header_objects_reversed.sub(rf"\1{REDACTED}\3", text)
        text = self.header_lines.sub(rf"\1{REDACTED}", text)
        text = self.members.sub(rf"\1{REDACTED}", text)
        return self.params.sub(rf"\1{REDACTED}", text)

    def _header_object(self, match: re.Match) -> str:
        """A JSON {"key": ..., "value": ...} of a header that is redacted, with its value redacted."""
        try:
            header = json.loads(match[0])
        except ValueError:
            return match[0]
        if (isinstance(header, dict) and isinstance(header.get("key"), str) and "value" in header
                and self.redactor.header_redacted(header["key"])):
            header["value"] = REDACTED
            return json.dumps(header)
        return match[0]


def _alternatives(names) -> str:
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)) or "(?!)"
