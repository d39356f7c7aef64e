"""Device tokens: `TANDEMSEG_TOKENS=dev1:tok1,dev2:tok2` or a file of `dev:tok` lines; Bearer auth.

The device id comes from the token, never from a header, so a device cannot act for another.
Lookups compare against every token with hmac.compare_digest, so timing does not reveal a prefix.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from tandemseg.errors import SpecError
from tandemseg.wire.http import DEVICE_ID_RE, parse_bearer

TOKENS_ENV = "TANDEMSEG_TOKENS"
MIN_TOKEN_CHARS = 8


class TokenMap:
    """device id -> token, immutable after construction."""

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise SpecError(f"no device tokens: set {TOKENS_ENV}=dev1:tok1,dev2:tok2 or pass --tokens FILE")
        seen: set[str] = set()
        for device, token in tokens.items():
            if not DEVICE_ID_RE.fullmatch(device):
                raise SpecError(f"device id {device!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
            if len(token) < MIN_TOKEN_CHARS or any(ch.isspace() or ch in ",:" for ch in token):
                raise SpecError(f"the token of {device!r} must have at least {MIN_TOKEN_CHARS} characters and no spaces, ':' or ','")
            if token in seen:
                raise SpecError(f"two devices share one token (one of them is {device!r}); each device needs its own")
            seen.add(token)
        self._items = tuple((d, t.encode()) for d, t in tokens.items())

    @classmethod
    def parse(cls, text: str, where: str = TOKENS_ENV) -> TokenMap:
        """'dev1:tok1,dev2:tok2' or one 'dev:tok' per line; blank lines and '#' comments are skipped."""
        tokens: dict[str, str] = {}
        for raw in text.replace(",", "\n").splitlines():
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            device, sep, token = entry.partition(":")
            if not sep or not device.strip() or not token.strip():
                raise SpecError(f"{where}: entry {entry[:40]!r} is not DEVICE:TOKEN")
            if device.strip() in tokens:
                raise SpecError(f"{where}: device {device.strip()!r} is listed twice")
            tokens[device.strip()] = token.strip()
        return cls(tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenMap:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"token file not found: {path} (one DEVICE:TOKEN per line)")
        return cls.parse(path.read_text(), str(path))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TokenMap:
        value = (environ if environ is not None else os.environ).get(TOKENS_ENV, "")
        return cls.parse(value, TOKENS_ENV)

    @property
    def devices(self) -> list[str]:
        return [d for d, _ in self._items]

    def credentials(self) -> list[tuple[str, str]]:
        """(device, token) pairs, for clients such as the load test that act as several devices."""
        return [(d, t.decode()) for d, t in self._items]

    def device_for_token(self, token: str | None) -> str | None:
        """The device owning `token`, or None; always compares against every token (constant time)."""
        if not token:
            return None
        given = token.encode()
        found = None
        for device, expected in self._items:
            if hmac.compare_digest(given, expected):
                found = device
        return found

    def device_for_header(self, authorization: str | None) -> str | None:
        return self.device_for_token(parse_bearer(authorization))
