"""Who may write, what an item id may be, how large an upload may get.

The bearer token lives in a file readable by its owner only (generated at first start);
comparisons are constant-time. Item ids become parts of URLs, file listings and CSV cells,
so they are bounded and free of path separators and control characters. The upload limit
is enforced on the raw request body, before any multipart parsing, so a huge upload costs
at most the limit in memory.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
import unicodedata
from pathlib import Path

MAX_ITEM_ID_LENGTH = 128
_FORBIDDEN_ID_CHARS = set('/\\;') | {"\x00"}


class ServiceError(Exception):
    """An error a client caused or should see: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def check_item_id(item_id: str) -> str:
    """Return ``item_id`` if it is acceptable, else raise a 400 :class:`ServiceError` saying why.

    The gallery's own rule (non-empty, no ``;``) plus: at most :data:`MAX_ITEM_ID_LENGTH`
    characters, no path separators, no control characters, no surrounding whitespace, not
    ``.`` or ``..``.
    """
    if not item_id or not item_id.strip():
        raise ServiceError(400, "item id is empty")
    if len(item_id) > MAX_ITEM_ID_LENGTH:
        raise ServiceError(400, f"item id is {len(item_id)} characters long; the limit is {MAX_ITEM_ID_LENGTH}")
    bad = sorted({c for c in item_id if c in _FORBIDDEN_ID_CHARS or unicodedata.category(c).startswith("C")})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ServiceError(400, f"item id {item_id!r} contains forbidden character(s) {shown} "
                                "(no path separators, ';' or control characters)")  # fmt: skip
    if item_id != item_id.strip():
        raise ServiceError(400, f"item id {item_id!r} has leading or trailing whitespace")
    if item_id in (".", ".."):
        raise ServiceError(400, f"item id {item_id!r} is not allowed")
    return item_id


def load_or_create_token(path: str | os.PathLike) -> tuple[str, bool]:
    """``(token, created)``: read the token file, or write a new random token there with mode 0600.

    A token file that others may read is refused: anyone on the machine could write to the gallery.
    """
    p = Path(path)
    if p.exists():
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"{p}: token file has mode {mode:o}; others may read it: chmod 600 {p}")
        token = p.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{p}: the token is {len(token)} characters; use at least 16")
        return token, False
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def check_bearer(header: str | None, token: str) -> None:
    """Raise 401 unless ``header`` is ``Bearer <token>``."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if not header:
        raise ServiceError(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                "(the token is in the service's token file)", challenge)  # fmt: skip
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ServiceError(401, "malformed Authorization header: expected 'Bearer <token>'", challenge)
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ServiceError(401, "wrong bearer token", challenge)


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a JSON 413 before the app parses it.

    The declared Content-Length is checked first; a chunked body is counted as it arrives
    (and buffered, at most ``limit`` bytes) before the app sees any of it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send, int(declared))
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await self._too_large(send, total)
            chunks.append(body)
            more = msg.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def receive_again():
            return replay.pop() if replay else await receive()

        return await self.app(scope, receive_again, send)

    async def _too_large(self, send, size: int) -> None:
        body = json.dumps({"error": f"upload of {size} bytes exceeds the limit of {self.limit} bytes",
                           "status": 413}).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
