"""What a plugin may do during one call, scoped to the current actor.

Everything a Context reaches goes through a `Host`: the WIT imports in a component
(`hub_plugin.component`), an in-memory hub in tests (`hub_plugin.testing`). Values crossing to
the hub are checked here, where the plugin's own stack is still on screen: a wrong type found
later, while the component's result is being converted, would trap the instance instead of
failing the call.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

from hub_plugin.duration import millis
from hub_plugin.types import Action, Deliver, Emit, Output, PluginError, decode, encode, encode_map

_UNREAD = object()
_S32 = (-(2**31), 2**31 - 1)
_S64 = (-(2**63), 2**63 - 1)


class Level(Enum):
    """Log levels, as in the WIT `log` interface (same order and values)."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class Host(Protocol):
    """The hub's side of one call, already scoped to its plugin and actor."""

    def now(self) -> int: ...
    def state_get(self, key: str) -> bytes | None: ...
    def state_set(self, key: str, value: bytes) -> None: ...
    def state_delete(self, key: str) -> None: ...
    def timer_set(self, id: str, due: int, payload: bytes) -> None: ...
    def timer_cancel(self, id: str) -> None: ...
    def profile(self) -> bytes | None: ...
    def log(self, level: Level, message: str) -> None: ...


class State:
    """This plugin's key/value state for the current actor; values are MessagePack (any value
    `umsgpack` encodes: dicts, lists, str, int, float, bool, None, bytes; tuples read back as lists)."""

    __slots__ = ("_host",)

    def __init__(self, host: Host) -> None:
        self._host = host

    def get(self, key: str, default: Any = None) -> Any:
        data = self._host.state_get(_text("state key", key))
        return default if data is None else decode(data)

    def set(self, key: str, value: Any) -> None:
        self._host.state_set(_text("state key", key), encode(value))

    def delete(self, key: str) -> None:
        self._host.state_delete(_text("state key", key))


class Timers:
    """This plugin's durable timers for the current actor. Setting an id again replaces it."""

    __slots__ = ("_host",)

    def __init__(self, host: Host) -> None:
        self._host = host

    def set_at(self, id: str, due: int, payload: Any = None) -> None:
        """Fire timer `id` at `due` (ms since the epoch) with `payload` (any MessagePack value)."""
        self._host.timer_set(_text("timer id", id), _int("timer due time", due, _S64), encode(payload))

    def set_after(self, id: str, delay: int | str, payload: Any = None) -> None:
        """Fire timer `id` after `delay`: milliseconds, or a duration such as `"15m"`."""
        try:
            delay_ms = millis(delay)
        except ValueError as e:
            raise PluginError(f"timer {id!r}: {e}") from e
        self.set_at(id, self._host.now() + delay_ms, payload)

    def cancel(self, id: str) -> None:
        """Cancel timer `id`; nothing happens if it is not set."""
        self._host.timer_cancel(_text("timer id", id))


class Context:
    """The handle a plugin gets for one call: the current actor's state, timers, profile and
    clock, and the outputs the call produces, in order."""

    __slots__ = ("actor", "state", "timers", "outputs", "_host", "_profile")

    def __init__(self, actor: str, host: Host) -> None:
        #: The actor this call is for.
        self.actor = actor
        self.state = State(host)
        self.timers = Timers(host)
        #: What this call produced so far, in order.
        self.outputs: list[Output] = []
        self._host = host
        self._profile: Any = _UNREAD

    def now(self) -> int:
        """The hub's clock, ms since the Unix epoch (virtual in tests)."""
        return self._host.now()

    def profile(self) -> dict[str, Any] | None:
        """What the hub knows about the current actor (name, email, tier…), or None."""
        if self._profile is _UNREAD:
            data = self._host.profile()
            self._profile = None if data is None else decode(data)
        return self._profile

    def emit(self, kind: str, payload: dict[str, Any] | None = None, actor: str | None = None) -> None:
        """Emit an event of `kind` for the current actor, or for `actor` (re-keying)."""
        if actor is not None:
            _text("actor", actor)
        self.outputs.append(Emit(_text("event kind", kind), actor, encode_map(payload)))

    def act(
        self,
        name: str,
        category: str,
        priority: int = 0,
        payload: dict[str, Any] | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Propose action `name` (e.g. `support.callback`) of `category` (e.g. `support`) to the
        arbiter; higher `priority` wins, and actions sharing a `dedup_key` within its window are
        duplicates."""
        if dedup_key is not None:
            _text("dedup key", dedup_key)
        self.outputs.append(
            Action(
                _text("action name", name),
                _text("action category", category),
                _int("priority", priority, _S32),
                dedup_key,
                encode_map(payload),
            )
        )

    def deliver(self, channel: str, target: str, body: bytes | str) -> None:
        """Hand a rendered message to a delivery channel (delivery plugins); text is sent as UTF-8."""
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):
            raise PluginError(f"a delivery body must be bytes or str, not {type(body).__name__}")
        self.outputs.append(Deliver(_text("channel", channel), _text("target", target), body))

    def log(self, level: Level, message: str) -> None:
        """Write a line to the hub's log, attributed to this plugin."""
        if not isinstance(level, Level):
            raise PluginError(f"a log level must be a hub_plugin.Level, not {level!r}")
        self._host.log(level, _text("log message", message))


def _text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PluginError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _int(what: str, value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PluginError(f"{what} must be an int, not {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise PluginError(f"{what} {value} is out of range")
    return value
