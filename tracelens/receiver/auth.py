"""Bearer-token checks for both transports: constant-time, and the token is never echoed."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from tracelens.errors import ReceiverError

TOKEN_ENV = "TRACELENS_AUTH_TOKEN"


class TokenCheck:
    """Accepts ``Authorization: Bearer <token>``; with no token configured, accepts all."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def accepts(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # compare_digest takes as long for a wrong token as for a right one of the same length.
        return hmac.compare_digest(presented.strip().encode(), self._token)


def load_token(token_file: str | None, env: dict[str, str] | None = None) -> str | None:
    """The server's token: ``--auth-token-file`` if given, else ``$TRACELENS_AUTH_TOKEN``."""
    if token_file:
        return read_token_file(token_file)
    return env_token(env)


def env_token(env: dict[str, str] | None = None) -> str | None:
    token = (env if env is not None else os.environ).get(TOKEN_ENV, "").strip()
    return token or None


def read_token_file(token_file: str) -> str:
    """The first line of the file, stripped; ``ReceiverError`` when unreadable or empty."""
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReceiverError(f"{token_file}: cannot read the token file: {exc.strerror}") from exc
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ReceiverError(f"{token_file}: the token file is empty")
    return token
