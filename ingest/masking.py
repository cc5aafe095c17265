"""The one secret masker: every error, log line and printed config goes through it.

A `Masker` holds the secret values of a configuration and replaces each occurrence of any
of them by a mask. A credential reaches text in more forms than it was given in:
clickhouse-connect percent-decodes a DSN's password and sends it inside a Basic-auth
header, and a server or proxy that quotes a request back shows that header; a DSN's
`access_token` goes out as a Bearer token. `credential_forms` lists every form, and
`mask_dsn` masks a DSN's credentials by their place, whatever their values.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

MASK = "*****"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]*)?|\[[0-9A-Fa-f:.]+\](:[0-9]*)?")
# DSN parameters that clickhouse-connect sends as a credential (access_token as a Bearer
# token, password as the Basic-auth password) or that hold one (a proxy's user:password@).
CREDENTIAL_PARAMS = ("access_token", "password", "http_proxy", "https_proxy")


_SHORT = 4


class Masker:
    """Text with every secret replaced by MASK; the longest first, so a secret that holds
    another is masked whole."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # A secret this short is in every other word ("e" in "store"): masked where it stands
        # alone (":e@", "password=e"), not inside words, which would leave no text to read.
        # A percent-escape before it ("%3Aab1") is a boundary too: the text may quote it encoded.
        self._short = {s: re.compile(rf"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{{2}})){re.escape(s)}(?![A-Za-z0-9])")
                       for s in self.secrets if len(s) < _SHORT}

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                short = self._short.get(secret)
                text = text.replace(secret, MASK) if short is None else short.sub(MASK, text)
        return text


def credential_forms(secret: str, users: Iterable[str] = ()) -> set[str]:
    """The secret as given, percent-decoded and percent-encoded (path and form styles),
    escaped in JSON, and inside a Basic-auth header for each user."""
    forms = {secret}
    for decoded in (unquote(secret), unquote_plus(secret)):
        forms.add(decoded)
    for plain in list(forms):
        forms |= {quote(plain, safe=""), quote(plain), quote_plus(plain), json.dumps(plain)[1:-1]}
        for user in users:
            forms.add(base64.b64encode(f"{user}:{plain}".encode()).decode())
    return {form for form in forms if form}


def _userinfo(dsn: str) -> tuple[int, int] | None:
    """Where the `user[:password]` of a DSN is (start, end of the text before its last `@`),
    found by hand: a password with a raw `#`, `/` or `?` (not percent-encoded, as it
    should be) makes urlsplit see none, and clickhouse-connect then fails quoting it."""
    start = dsn.find("://")
    if start < 0:
        return None
    start += 3
    netloc = urlsplit(dsn).netloc
    if "@" in netloc:  # well-formed: urlsplit found it
        return start, start + netloc.rfind("@")
    at = dsn.rfind("@", start)
    if at < 0 or "=" in dsn[start:at] or "&" in dsn[start:at]:
        return None  # an "@" in the query, not after a user
    host = re.split(r"[/?#]", dsn[at + 1:], maxsplit=1)[0]
    return (start, at) if _HOST.fullmatch(host) else None


def without_userinfo(dsn: str) -> str:
    """The DSN without its `user[:password]@`, found as `_userinfo` finds it: what urlsplit
    reads the host and port of, whatever the password holds."""
    where = _userinfo(dsn)
    return dsn if where is None else dsn[:where[0]] + dsn[where[1] + 1:]


def dsn_secrets(dsn: str) -> tuple[list[str], list[str]]:
    """(secrets, users) a DSN holds: its password, its credential parameters, the passwords
    of the proxies it names; the users they go with."""
    parts = urlsplit(dsn)
    secrets, users = [], []
    where = _userinfo(dsn)
    if where is not None:
        user, colon, password = dsn[where[0]:where[1]].partition(":")
        users += [user, unquote(user)]  # a password from elsewhere goes with it
        if colon and password:
            secrets.append(password)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name in ("access_token", "password"):
            secrets.append(value)
        elif name in ("http_proxy", "https_proxy"):
            proxy = urlsplit(value)
            if proxy.password:
                secrets.append(proxy.password)
                users += [proxy.username or "", unquote(proxy.username or "")]
        elif name in ("user", "user_name", "username"):
            users.append(value)
    # Raw forms too: parse_qsl decoded them, and the text may quote the DSN as written.
    for name, value in (pair.partition("=")[::2] for pair in parts.query.split("&")):
        if name in CREDENTIAL_PARAMS and value:
            secrets.append(value)
    return secrets, users


def mask_dsn(dsn: str) -> str:
    """The DSN with its password and credential parameters, if any, replaced by the mask."""
    where = _userinfo(dsn)
    if where is not None and ":" in dsn[where[0]:where[1]]:
        user = dsn[where[0]:where[1]].partition(":")[0]
        dsn = f"{dsn[:where[0]]}{user}:{MASK}{dsn[where[1]:]}"
    parts = urlsplit(dsn)
    if parts.query:
        masked = []
        for pair in parts.query.split("&"):
            name, equals, value = pair.partition("=")
            masked.append(f"{name}={MASK}" if equals and value and name in CREDENTIAL_PARAMS else pair)
        parts = parts._replace(query="&".join(masked))
    return urlunsplit(parts)
