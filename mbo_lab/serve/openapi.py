"""The OpenAPI 3.1 description served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .feeds import RECORD_FIELDS

__all__ = ["openapi"]

_ERR = {"description": "Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_AUTH_ERRORS = {
    "401": {**_ERR, "description": "Missing token (the server requires one here)"},
    "403": {**_ERR, "description": "Wrong token"},
    "421": {**_ERR, "description": "Host header not answered by this server (DNS-rebinding "
            "guard): use a loopback name, an allowed host, or send the token"},
    "431": {**_ERR, "description": "Request headers over 64 kB"},
}
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}


def _levels(max_levels: int) -> dict[str, Any]:
    return {"name": "levels", "in": "query", "required": False,
            "description": f"Levels per side, 1..{max_levels} (default {max_levels})",
            "schema": {"type": "integer", "minimum": 1, "maximum": max_levels}}


def openapi(max_levels: int = 10, batch: int = 1000) -> dict[str, Any]:
    """The API description (``max_levels`` and ``batch`` are the running server's)."""
    json_ok = {"description": "OK", "content": {"application/json": {
        "schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mbo_lab replay server",
            "version": __version__,
            "description": (
                "Server-Sent Events and JSON over one mbo_lab replay session.\n\n"
                "Auth: `POST /v1/player` and `POST /v1/auth` always need the token "
                "(`Authorization: Bearer <token>`). When the server binds a non-loopback "
                "address every endpoint but `/health` needs it; GET requests may also send "
                "it as the `mbo_lab_token_<port>` cookie (set by `POST /v1/auth`) or as `?token=` "
                "(never logged by this server, but proxies may log URLs: prefer the header "
                "or the cookie).\n\n"
                "Behind jupyter-server-proxy (Binder) the base URL is "
                "`{JUPYTERHUB_SERVICE_PREFIX}proxy/<port>/`, and streams are forwarded "
                "unbuffered only if the request's `Accept` header is exactly "
                "`text/event-stream`."),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "properties": {
                        "status": {"type": "integer"}, "reason": {"type": "string"},
                        "message": {"type": "string"}}}}},
                "MboEvent": {
                    "type": "object",
                    "description": (
                        "SSE `event: mbo`, `id:` = index of the event's last record. "
                        "`rows` hold one array per record in `fields` order: prices in "
                        "currency units (null if undefined), times in ns since the epoch "
                        "(exact in JSON; JavaScript numbers lose digits above 2^53), "
                        "`flags` the raw bit field, `effect` what the record does to the "
                        "book."),
                    "properties": {
                        "first": {"type": "integer"}, "last": {"type": "integer"},
                        "count": {"type": "integer"},
                        "fields": {"type": "array", "items": {"type": "string"},
                                   "example": list(RECORD_FIELDS)},
                        "rows": {"type": "array", "items": {"type": "array"}}}},
                "PlayerAction": {
                    "type": "object", "required": ["action"],
                    "properties": {
                        "action": {"enum": ["play", "pause", "seek", "speed", "step"]},
                        "speed": {"description": "play/speed: 0.1..1000 (x real time) or "
                                  "\"max\"", "oneOf": [{"type": "number"},
                                                       {"const": "max"}]},
                        "index": {"type": "integer", "description": "seek: record index"},
                        "time": {"type": "string", "description": "seek: a timestamp "
                                 "(UTC if no zone)"},
                        "n": {"type": "integer", "description": "step: events (default 1, "
                              "negative goes back)"}}},
            },
        },
        "paths": {
            "/v1/stream/mbo": {"get": {
                "summary": "Every MBO record in file order, batched, at full speed",
                "description": (
                    f"Streams the session's records from `from` (or after `Last-Event-ID`) "
                    f"to `to` as fast as the client reads, in events of up to {batch} "
                    "records aligned to multiples of the batch size, independent of the "
                    "playback position. Ends with `event: end` and closes. A client that "
                    "doesn't take an event within the send timeout gets `event: overflow` "
                    "(`last_id`: the last id written before it) and is disconnected; it "
                    "resumes with `Last-Event-ID` (the id it last received) and loses or "
                    "repeats nothing. 204 when nothing is left (stops EventSource "
                    "reconnects)."),
                "parameters": [
                    {"name": "from", "in": "query", "schema": {"type": "integer",
                                                               "minimum": 0},
                     "description": "First record index (default 0)"},
                    {"name": "to", "in": "query", "schema": {"type": "integer"},
                     "description": "End record index, exclusive (default: all)"},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"},
                     "description": "Resume after this record index (wins over `from`); "
                     "also `?lastEventId=`"},
                ],
                "responses": {"200": {"description": "SSE: `mbo`, `end`, `overflow` events",
                                      "content": _SSE},
                              "204": {"description": "Nothing left to send"},
                              "400": _ERR, **_AUTH_ERRORS, "503": _ERR}}},
            "/v1/stream/book": {"get": {
                "summary": "Book frames of the replay, conflated (latest wins)",
                "description": (
                    "Sends the current frame at once, then each newly published frame, "
                    "keeping frames at least 0.8/`max_hz` s apart (the 20% allowance "
                    "absorbs publication jitter); frames published meanwhile are skipped "
                    "and a slow client gets the newest one, never a queue. `event: book`, "
                    "`id:` = frame seq; `published_at` is the server's epoch time of "
                    "publication."),
                "parameters": [_levels(max_levels),
                               {"name": "max_hz", "in": "query", "schema": {
                                   "type": "number", "minimum": 0.1, "maximum": 1000},
                                "description": "Max frames per second (default: session fps)"}],
                "responses": {"200": {"description": "SSE `book` events", "content": _SSE},
                              "400": _ERR, **_AUTH_ERRORS, "503": _ERR}}},
            "/v1/book": {"get": {"summary": "The current book frame", "parameters": [
                _levels(max_levels)], "responses": {"200": json_ok, "400": _ERR,
                                                    **_AUTH_ERRORS}}},
            "/v1/info": {"get": {"summary": "Data, replay state and server facts",
                                 "responses": {"200": json_ok, **_AUTH_ERRORS}}},
            "/v1/player": {"post": {
                "summary": "Control the replay", "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PlayerAction"}}}},
                "responses": {"200": json_ok, "400": _ERR, **_AUTH_ERRORS}}},
            "/v1/auth": {"post": {
                "summary": "Set the token cookie (HttpOnly, SameSite=Strict) for EventSource "
                           "in a browser", "security": [{"bearer": []}],
                "responses": {"200": json_ok, **_AUTH_ERRORS}}},
            "/health": {"get": {"summary": "Liveness (never needs a token)",
                                "responses": {"200": json_ok}}},
            "/ready": {"get": {"summary": "Readiness: 503 while stopping",
                               "responses": {"200": json_ok, "503": _ERR, **_AUTH_ERRORS}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text or OpenMetrics, by "
                                            "Accept)",
                                 "responses": {"200": {"description": "Metrics",
                                                       "content": {"text/plain": {}}},
                                               **_AUTH_ERRORS}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": json_ok, **_AUTH_ERRORS}}},
            "/": {"get": {"summary": "Live ladder page (plain JavaScript EventSource)",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {}}}}}},
        },
    }
