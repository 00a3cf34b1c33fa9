"""Durations in plugin configs and timer arithmetic, in the hub's unit (milliseconds).

The text syntax is the Rust SDK's (`time::Millis`, parsed by humantime), so one config serves a
scenario in either language: `"30m"`, `"90s"`, `"2h 30m"`, `"1.5h"`, `"500ms"`, or a plain
non-negative number of milliseconds.
"""

from __future__ import annotations

import json
import re

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_NS_PER_MS = 1_000_000
_MAX_MS = 2**63 - 1

# Nanoseconds per unit, under every spelling humantime accepts (case matters: `M` is months).
_UNITS = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1),
    **dict.fromkeys(("usec", "us", "\u00b5s"), 1_000),
    **dict.fromkeys(("millis", "msec", "ms"), _NS_PER_MS),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1_000 * _NS_PER_MS),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60_000 * _NS_PER_MS),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3_600_000 * _NS_PER_MS),
    **dict.fromkeys(("days", "day", "d"), 86_400_000 * _NS_PER_MS),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 7 * 86_400_000 * _NS_PER_MS),
    **dict.fromkeys(("months", "month", "M"), 2_630_016_000 * _NS_PER_MS),
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31_557_600_000 * _NS_PER_MS),
}

# One term: a number (fraction allowed), optional blanks, a unit. Terms may be run together.
_TERM = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*([A-Za-z\u00b5]*)")


def millis(value: int | str) -> int:
    """Milliseconds in `value`: a non-negative int, or a text duration such as `"15m"`.

    Raises ValueError with a message fit for a config error."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'a duration is a number of milliseconds or a text such as "30s", not {_shown(value)}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration must not be negative: {value}")
        return value
    return _parse(value)


def _parse(text: str) -> int:
    if text == "0":
        return 0
    if not text.strip():
        raise ValueError(f"invalid duration {_shown(text)}: it is empty")
    total_ns = 0
    position = 0
    while position < len(text) and not text[position:].isspace():
        term = _TERM.match(text, position)
        if term is None:
            raise ValueError(f"invalid duration {_shown(text)}: a number is expected at {position}")
        whole, fraction, unit = term.groups()
        if not unit:
            raise ValueError(
                f'invalid duration {_shown(text)}: a time unit is needed, for example "{whole}s" or "{whole}ms"'
            )
        if unit not in _UNITS:
            raise ValueError(
                f"invalid duration {_shown(text)}: unknown time unit {_shown(unit)} "
                "(ns, us, ms, s, m, h, d, w, M, y, or their long names)"
            )
        scale = _UNITS[unit]
        total_ns += int(whole) * scale
        if fraction:
            total_ns += int(fraction) * scale // 10 ** len(fraction)
        position = term.end()
    total_ms = total_ns // _NS_PER_MS
    if total_ms > _MAX_MS:
        raise ValueError(f"invalid duration {_shown(text)}: it is too large")
    return total_ms


def _shown(value: object) -> str:
    """A value as written in the JSON config it most often comes from."""
    return json.dumps(value, ensure_ascii=False, default=repr)
