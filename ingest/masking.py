"""The one secret masker: every error, log line and printed config goes through it.

A `Masker` holds the secret values of a configuration (the store's password, from the
config, its file or the DSN) and replaces each occurrence of any of them by a mask.
`mask_dsn` masks the password inside a DSN by its place, whatever its value.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "*****"


class Masker:
    """Text with every secret replaced by MASK; the longest first, so a secret that holds
    another is masked whole."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def mask_dsn(dsn: str) -> str:
    """The DSN with its password, if any, replaced by the mask."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username}:{MASK}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
