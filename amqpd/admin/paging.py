"""List mechanics of RabbitMQ's API: ``sort`` / ``sort_reverse``, ``columns``, and paging
(``page``, ``page_size``, ``name``, ``use_regex``) with its envelope. Unknown parameters
are ignored, as RabbitMQ does (the UI sends ``*_age`` and ``*_incr`` ones)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from amqpd.admin.errors import bad_request

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
_MISSING = object()


def _lookup(item: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = item
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    """Missing and null first, then numbers, then text (RabbitMQ sorts mixed terms too)."""
    if value is _MISSING or value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "").lower() == "true"


def _positive(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be a positive integer, got '{text}'") from None
    if value < 1:
        raise bad_request(f"{name} must be a positive integer, got '{text}'")
    return value


def select_columns(item: Mapping[str, Any], columns: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Only the given dotted columns of ``item``, nested as in the original."""
    result: dict[str, Any] = {}
    for path in columns:
        value = _lookup(item, path)
        if value is _MISSING:
            continue
        target = result
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return result


def parse_columns(query: Mapping[str, str]) -> list[list[str]]:
    """``columns=name,message_stats.publish`` as paths."""
    return [c.split(".") for c in query.get("columns", "").split(",") if c.strip()]


def shape(item: dict[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
    """One object with ``columns`` applied (single-object endpoints take it too)."""
    columns = parse_columns(query)
    return select_columns(item, columns) if columns else item


def listing(items: list[dict[str, Any]], query: Mapping[str, str], pageable: bool = True) -> Any:
    """Sort, filter, page and cut columns as RabbitMQ does; a list, or the paged envelope
    when ``page`` is given (on the endpoints that page)."""
    sort = query.get("sort", "")
    if sort:
        path = sort.split(".")
        items = sorted(items, key=lambda item: _sort_key(_lookup(item, path)))
    if _flag(query, "sort_reverse"):
        items = list(reversed(items))
    columns = parse_columns(query)
    if not pageable or "page" not in query:
        return [select_columns(item, columns) for item in items] if columns else items
    page = _positive(query, "page", 1)
    page_size = _positive(query, "page_size", DEFAULT_PAGE_SIZE)
    if page_size > MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be less than or equal to {MAX_PAGE_SIZE}")
    total = len(items)
    name = query.get("name", "")
    if name:
        if _flag(query, "use_regex"):
            try:
                pattern = re.compile(name)
            except re.error as exc:
                raise bad_request(f"invalid regular expression '{name}': {exc}") from None
            items = [i for i in items if pattern.search(str(i.get("name", "")))]
        else:
            items = [i for i in items if name in str(i.get("name", ""))]
    filtered = len(items)
    page_count = max(1, math.ceil(filtered / page_size))
    if page > page_count:
        raise bad_request("page out of range")
    chunk = items[(page - 1) * page_size : page * page_size]
    if columns:
        chunk = [select_columns(item, columns) for item in chunk]
    return {
        "filtered_count": filtered,
        "item_count": len(chunk),
        "items": chunk,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }
