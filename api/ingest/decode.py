"""Bytes to JSON for every ingest path, refusing what cannot be read with a reason.

A record that is not UTF-8, not JSON or nested deeper than ``MAX_JSON_DEPTH``
becomes ``Undecodable`` - it is refused (and kept in ``dead_letters``) while
the rest of its batch still counts.  ``decode_record`` reads one JSON line
(``phobos load``, a Kafka message's lines); ``decode_body`` a request body,
cutting out only the records too deep to decode when it knows where the
records are.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Undecodable", "decode_record", "decode_body", "MAX_JSON_DEPTH"]

#: Deepest JSON a body may hold. Records are flat and the webhook payloads a
#: few levels deep; Python's own parser gives up (RecursionError) near 1,000.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Undecodable:
    """A record that could not even be decoded; it becomes a dead letter with ``reason``."""

    raw: bytes | str
    reason: str


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


def decode_record(raw: bytes | str) -> Any:
    """One JSON-lines record, or ``Undecodable`` with the reason it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        return Undecodable(raw, f"not UTF-8: {err.reason} at byte {err.start}")
    try:
        value = json.loads(text)
    except RecursionError:
        return Undecodable(raw, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    except ValueError as err:
        return Undecodable(raw, f"not JSON: {err}")
    if _depth(value) > MAX_JSON_DEPTH:
        return Undecodable(raw, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


_STRUCTURE = re.compile(rb'\\.|["\[\]{}]', re.S)


def _cut_deep(data: bytes, cut_depth: int) -> tuple[bytes, str, list[bytes]]:
    """``data`` with each container opened at ``cut_depth`` that nests deeper than
    ``MAX_JSON_DEPTH`` replaced by a placeholder string; the cut-out texts."""
    # NUL cannot occur in a record field the contract accepts: the marker cannot be forged into one.
    marker = "\0phobos-cut:" + os.urandom(8).hex() + ":"
    out, cuts = [], []
    depth, in_string, start, deep, last = 0, False, -1, False, 0
    for match in _STRUCTURE.finditer(data):
        token = match.group()
        if token[0] == 0x5C:  # an escape: only inside strings, never structure
            continue
        if token == b'"':
            in_string = not in_string
        elif in_string:
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth == cut_depth:
                start, deep = match.start(), False
            elif depth > MAX_JSON_DEPTH and start >= 0:
                deep = True
        else:
            if depth == cut_depth and start >= 0:
                if deep:
                    out += [data[last:start], json.dumps(f"{marker}{len(cuts)}").encode()]
                    cuts.append(data[start:match.end()])
                    last = match.end()
                start = -1
            depth -= 1
    if start >= 0 and deep:  # unterminated: cut to the end, the parser reports the rest
        out += [data[last:start], json.dumps(f"{marker}{len(cuts)}").encode()]
        cuts.append(data[start:])
        last = len(data)
    out.append(data[last:])
    return b"".join(out), marker, cuts


def decode_body(data: bytes, records_at: int | None = None) -> Any:
    """A request body as JSON, refusing bodies nested deeper than ``MAX_JSON_DEPTH``.

    With ``records_at`` (the depth of the records in the body: 3 for
    ``{"connections": [{...}]}``, 2 for ``[{...}]``), a record nested too deeply is cut out and
    stands in the result as ``Undecodable``, so the rest of the body still
    counts; anywhere else depth is the whole body's fault.

    Raises
    ------
    ValueError
        With a reason for a person: not UTF-8, not JSON, nested too deeply.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the body is not UTF-8: {err.reason} at byte {err.start}") from None
    try:
        value = json.loads(text)
        deep = _depth(value) > MAX_JSON_DEPTH
    except RecursionError:
        deep = True
    except ValueError as err:
        raise ValueError(f"the body is not JSON: {err}") from None
    if not deep:
        return value
    if records_at is None:
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    cut, marker, cuts = _cut_deep(data, records_at)
    try:
        value = json.loads(cut.decode("utf-8"))
    except (RecursionError, ValueError):
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")

    restored = 0

    def restore(item: Any) -> Any:
        nonlocal restored
        if isinstance(item, str) and item.startswith(marker):
            index = item[len(marker):]
            if index.isdigit() and int(index) < len(cuts):
                restored += 1
                return Undecodable(cuts[int(index)], f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return item

    if isinstance(value, dict) and records_at == 3:
        value = {k: [restore(r) for r in v] if isinstance(v, list) else v for k, v in value.items()}
    elif isinstance(value, list) and records_at == 2:
        value = [restore(r) for r in value]
    if restored < len(cuts):  # something deep where no records are
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value
