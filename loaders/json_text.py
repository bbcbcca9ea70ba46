"""JSON from outside (a prompt file's line, a picture's metadata chunk), parsed with the pack's error
instead of the json module's: a broken or absurdly nested document names its source, never a traceback."""

from __future__ import annotations

import json

from .errors import ZImageInputError

MAX_DEPTH = 64  # deeper than any workflow or prompt row; Python's parser would overflow its stack near 1000


def parse_json(text: str, what: str, where: str, fix: str):
    depth = _nesting_depth(text)
    if depth > MAX_DEPTH:
        raise ZImageInputError(what, f"{where}: JSON nested {depth} levels deep", f"at most {MAX_DEPTH} levels", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZImageInputError(what, f"{where} is not JSON ({exc.msg} at character {exc.pos})", "valid JSON", fix) from None
    except RecursionError:  # the depth count above makes this unreachable in practice; kept as a guard
        raise ZImageInputError(what, f"{where}: JSON nested too deeply", f"at most {MAX_DEPTH} levels", fix) from None


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
