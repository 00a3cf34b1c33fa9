"""The Python shapes of what crosses the plugin boundary, and their MessagePack encoding.

Payloads, state values and timer payloads are MessagePack, as in the Rust SDK, so a scenario
rewritten from Rust to Python (or back) keeps reading the state the other one wrote. Inputs keep
their raw bytes and decode on first use: a plugin that only looks at `kind` or `time` pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import umsgpack

from hub_plugin.pattern import pattern_error


class PluginError(Exception):
    """A failure the hub should see: its message goes to the dead letters (or to the admin, from
    `init`). Raise it for expected refusals; any other exception is reported the same way."""


def encode(value: Any) -> bytes:
    """MessagePack bytes of `value` (maps, lists, str, bytes, int, float, bool, None)."""
    try:
        return umsgpack.packb(value)
    except umsgpack.PackException as e:
        raise PluginError(f"cannot encode {type(value).__name__} as MessagePack: {e}") from e


def decode(data: bytes) -> Any:
    """The value of MessagePack bytes; an empty payload reads as an empty map."""
    if not data:
        return {}
    try:
        return umsgpack.unpackb(data)
    except umsgpack.UnpackException as e:
        raise PluginError(f"cannot decode payload: {type(e).__name__} {e}") from e


def encode_map(payload: Any) -> bytes:
    """A payload for the hub: always a MessagePack map, `None` meaning an empty one."""
    if payload is None:
        return b"\x80"
    if not isinstance(payload, dict):
        raise PluginError(f"a payload must be a dict, not {type(payload).__name__}")
    return encode(payload)


class _Decoded:
    """Raw MessagePack in `raw_payload`, decoded once into `payload` when first read."""

    __slots__ = ()
    raw_payload: bytes
    _payload: Any

    @property
    def payload(self) -> Any:
        cached = self._payload
        if cached is _UNREAD:
            cached = self._payload = decode(self.raw_payload)
        return cached


_UNREAD = object()


class Event(_Decoded):
    """One event of one actor, as the hub routes it."""

    __slots__ = ("id", "kind", "actor", "time", "source", "raw_payload", "_payload")

    def __init__(self, id: str, kind: str, actor: str, time: int, source: str, raw_payload: bytes) -> None:
        self.id = id
        self.kind = kind
        self.actor = actor
        #: Event time, ms since the Unix epoch.
        self.time = time
        #: The NATS subject it came from, or `plugin:<name>` for emitted events.
        self.source = source
        self.raw_payload = raw_payload
        self._payload: Any = _UNREAD

    @property
    def action_name(self) -> str | None:
        """For a delivery plugin: the action this event brings (its kind is `action.<name>`)."""
        return self.kind[len("action."):] if self.kind.startswith("action.") else None

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, kind={self.kind!r}, actor={self.actor!r}, time={self.time})"


class Timer(_Decoded):
    """A timer of this plugin that came due, with what was stored in it."""

    __slots__ = ("id", "actor", "due", "raw_payload", "_payload")

    def __init__(self, id: str, actor: str, due: int, raw_payload: bytes) -> None:
        self.id = id
        self.actor = actor
        #: When it was due, ms since the Unix epoch.
        self.due = due
        self.raw_payload = raw_payload
        self._payload: Any = _UNREAD

    def __repr__(self) -> str:
        return f"Timer(id={self.id!r}, actor={self.actor!r}, due={self.due})"


@dataclass(frozen=True)
class Emit:
    """A new event for the hub to route; `actor` None means the actor of the current call."""

    kind: str
    actor: str | None
    raw_payload: bytes

    @property
    def payload(self) -> Any:
        return decode(self.raw_payload)


@dataclass(frozen=True)
class Action:
    """An action for the arbiter: an offer, a callback, an alert."""

    name: str
    category: str
    priority: int
    dedup_key: str | None
    raw_payload: bytes

    @property
    def payload(self) -> Any:
        return decode(self.raw_payload)


@dataclass(frozen=True)
class Deliver:
    """A rendered message for a delivery channel (delivery plugins only)."""

    channel: str
    target: str
    body: bytes


Output = Emit | Action | Deliver


@dataclass
class Description:
    """Who a plugin is and what it subscribes to; the hub checks it before the plugin goes live.

    Patterns: `*` matches one dot-separated token, a final `>` one or more (`action.` patterns
    are how delivery plugins take the actions the arbiter let through)."""

    name: str
    version: str
    subscribes: list[str] = field(default_factory=list)
    emits: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Refuse what the hub would refuse, so the mistake shows in tests and at build time."""
        if not (0 < len(self.name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in self.name)):
            raise PluginError(f"name {self.name!r} must be 1-64 characters of letters, digits, '-' or '_'")
        if not self.subscribes:
            raise PluginError(f"plugin {self.name} subscribes to no event kinds")
        for pattern in self.subscribes:
            problem = pattern_error(pattern)
            if problem:
                raise PluginError(problem)
