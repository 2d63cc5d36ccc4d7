"""Bearer tokens for the API.

`STOCK_PLATFORM_API_TOKENS` holds the tokens' SHA-256 hashes (`sha256:<64 hex>`, comma-separated), never the
tokens: `stock-platform token` makes a token and prints it once beside its hash. With hashes configured, every
request but `GET /health` needs `Authorization: Bearer <token>`, on HTTP and on the WebSocket handshake alike:
401 without one, 403 for a token whose hash is not listed (compared in constant time with every listed hash).
Rotation: add the new token's hash, move the clients, remove the old hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

HASH_PREFIX = "sha256:"
OPEN_PATHS = frozenset({"/health"})


def hash_token(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A random token (256 bits, URL-safe) and its hash."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


class BearerAuth:
    """ASGI middleware: requests (HTTP and WebSocket) pass with a listed token, are refused without one."""

    def __init__(self, app, hashes: tuple[str, ...]) -> None:
        self.app, self.hashes = app, hashes

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        value = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "a bearer token is required (Authorization: Bearer <token>)"
        digest = hash_token(token.strip())
        known = False
        for listed in self.hashes:  # every hash compared: the time does not tell which one (or none) matched
            known |= hmac.compare_digest(digest, listed)
        return None if known else (403, "this token is not accepted")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        refused = self.refusal(scope["headers"])
        if refused is None:
            return await self.app(scope, receive, send)
        status, reason = refused
        headers = [(b"content-type", b"application/json"),
                   (b"www-authenticate", b"Bearer" if status == 401 else b'Bearer error="invalid_token"')]
        body = json.dumps({"detail": reason}).encode()
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):  # the handshake answered with the status
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without denial responses: refused with 403
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
