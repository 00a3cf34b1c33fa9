"""A deployment's config: the JSON object the hub passes to `init`, read with defaults.

An operator who misspells a field or gives a bad value should learn it when the config is
refused, not when a customer is not called back; so unknown fields are refused and every bad
value is named, as the Rust SDK's `deny_unknown_fields` configs do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hub_plugin.duration import millis
from hub_plugin.types import PluginError


def decode_config(text: str) -> dict[str, Any]:
    """The config object in `text`; an empty text means `{}`."""
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as e:
        raise PluginError(f"invalid config: not JSON: {e}") from e
    if not isinstance(config, dict):
        raise PluginError(f"invalid config: a JSON object is expected, not {_show(config)}")
    return config


class Config:
    """The fields of a config over their defaults; fields without a default are refused.

        cfg = Config(config, threshold=3, window="10m")
        self.threshold = cfg.integer("threshold", minimum=1)
        self.window_ms = cfg.duration("window", minimum=1)
    """

    def __init__(self, config: Mapping[str, Any], **defaults: Any) -> None:
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise PluginError(f"invalid config: unknown field {', '.join(unknown)} (known fields: {known})")
        self._values = {**defaults, **config}

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._values[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        if minimum is not None and value < minimum:
            raise self._bad(name, f"at least {minimum}")
        if maximum is not None and value > maximum:
            raise self._bad(name, f"at most {maximum}")
        return value

    def number(self, name: str, *, minimum: float | None = None) -> float:
        value = self._values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(name, "a number")
        if minimum is not None and value < minimum:
            raise self._bad(name, f"at least {minimum}")
        return float(value)

    def duration(self, name: str, *, minimum: int = 0) -> int:
        """Milliseconds: a number of ms or a text such as `"15m"` (see `hub_plugin.duration`)."""
        try:
            value = millis(self._values[name])
        except ValueError as e:
            raise PluginError(f"invalid config: {name}: {e}") from e
        if value < minimum:
            raise self._bad(name, f"at least {minimum} ms")
        return value

    def string(self, name: str, *, allow_empty: bool = False) -> str:
        value = self._values[name]
        if not isinstance(value, str) or not (value or allow_empty):
            raise self._bad(name, "a string" if allow_empty else "a non-empty string")
        return value

    def boolean(self, name: str) -> bool:
        value = self._values[name]
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def _bad(self, name: str, expected: str) -> PluginError:
        return PluginError(f"invalid config: {name} must be {expected}, not {_show(self._values[name])}")


def _show(value: Any) -> str:
    """A config value as the operator wrote it (JSON), not as Python prints it."""
    return json.dumps(value, ensure_ascii=False)
