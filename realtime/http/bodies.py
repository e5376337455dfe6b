"""Reading request bodies safely: JSON only as ``application/json``, bounded size and nesting,
unknown charsets and undecodable bytes as 400s (never a 500 from input)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from avatarstream.realtime.errors import BadRequest, TooLarge, UnsupportedMediaType

MAX_JSON_BYTES = 1 * 2**20  # a JSON body larger than this is refused (413)
MAX_JSON_DEPTH = 32  # nesting of objects/arrays


async def read_text(request: web.Request, max_bytes: int) -> str:
    """The body as text in its declared charset (default UTF-8); 413 over ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"request body is larger than {max_bytes} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > max_bytes:
            raise TooLarge(f"request body is larger than {max_bytes} bytes")
    charset = request.charset or "utf-8"
    try:
        return bytes(data).decode(charset)
    except LookupError:
        raise BadRequest("unknown charset in Content-Type") from None
    except UnicodeDecodeError:
        raise BadRequest(f"request body is not valid {charset} text") from None


def parse_json(text: str, what: str = "body") -> Any:
    """JSON text -> value; 400 for invalid or too deeply nested JSON."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadRequest(f"{what} is not valid JSON (or nested too deeply)") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        else:
            continue
        deepest = max(deepest, d + 1)
    return deepest


async def read_json(request: web.Request, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON body; 415 unless the request says ``Content-Type: application/json``."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send JSON with 'Content-Type: application/json'")
    return parse_json(await read_text(request, max_bytes))


async def read_json_object(request: web.Request, example: str) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, e.g. {example}")
    return body
