"""A hub in memory, for testing plugin logic with `python3 -m unittest` and no wasm runtime.

`TestHub` holds one plugin, a virtual clock and, per actor, the state, timers and profile the
real hub keeps. It behaves as the hub does where a test can tell:
- only events of a subscribed kind reach the plugin;
- a failed call leaves nothing behind (its state and timer writes are dropped) and raises
  PluginError with the message the hub would put in the dead letter;
- advancing the clock fires due timers one by one in due order, each with the clock at its due
  time, including timers set by the timers that fired before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hub_plugin.context import Context, Level
from hub_plugin.duration import millis
from hub_plugin.pattern import kind_matches
from hub_plugin.plugin import Plugin, create, failure_message
from hub_plugin.types import Event, Output, PluginError, Timer, decode, encode_map

#: The start of the virtual clock: 2026-01-01T00:00:00Z (as in the Rust SDK's TestHub).
EPOCH = 1_767_225_600_000


class TestHub:
    """One plugin running against an in-memory hub with a virtual clock."""

    __test__ = False  # a helper, not a test case, for runners that collect `Test*` classes

    def __init__(self, plugin_class: type[Plugin], config: Mapping[str, Any] | None = None) -> None:
        """Start a fresh hub (clock at EPOCH, nothing stored) with the plugin built from `config`;
        raises PluginError with `init`'s message if the config is refused."""
        description = plugin_class.describe()
        description.validate()
        self._plugin_class = plugin_class
        self._subscribes = list(description.subscribes)
        self._now = EPOCH
        self._state: dict[tuple[str, str], bytes] = {}
        self._timers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._profiles: dict[str, bytes] = {}
        self._events_made = 0
        #: Log lines the plugin wrote, as `level: message`.
        self.logs: list[str] = []
        self._plugin = self._build(config)

    @property
    def now(self) -> int:
        """The virtual clock, ms since the Unix epoch."""
        return self._now

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Rebuild the plugin with a new config, keeping state, timers and clock (as the hub does).
        A refused config raises PluginError and leaves the running plugin in place."""
        self._plugin = self._build(config)

    def event(self, kind: str, actor: str, payload: dict[str, Any] | None = None, *, time: int | None = None) -> Event:
        """An event of `kind` for `actor`, at the current virtual time unless `time` is given."""
        self._events_made += 1
        return Event(
            f"test-{self._events_made}",
            kind,
            actor,
            self._now if time is None else time,
            "test",
            encode_map(payload),
        )

    def send(self, event: Event) -> list[Output]:
        """Deliver one event, as the hub would if the plugin subscribes to its kind."""
        if not any(kind_matches(pattern, event.kind) for pattern in self._subscribes):
            return []
        return self._call(self._plugin.on_event, event)

    def advance(self, duration: int | str) -> list[Output]:
        """Move the clock forward by `duration` (ms, or a text such as `"15m"`), firing every timer
        that comes due on the way; returns their outputs in order. A timer whose call fails is
        gone (the hub dead-letters it) and raises PluginError, the clock left at its due time."""
        until = self._now + millis(duration)
        outputs: list[Output] = []
        while True:
            ripe = [(due, actor, id) for (actor, id), (due, _) in self._timers.items() if due <= until]
            if not ripe:
                break
            when, actor, id = min(ripe)
            _, payload = self._timers.pop((actor, id))
            self._now = max(self._now, when)
            outputs.extend(self._call(self._plugin.on_timer, Timer(id, actor, when, payload)))
        self._now = until
        return outputs

    def set_profile(self, actor: str, profile: dict[str, Any]) -> None:
        """Set what the hub knows about `actor` (a map, as the hub stores profiles)."""
        self._profiles[actor] = encode_map(profile)

    def state(self, actor: str, key: str) -> Any:
        """The plugin's state for `actor` under `key`, decoded; None if unset."""
        data = self._state.get((actor, key))
        return None if data is None else decode(data)

    def timers(self, actor: str) -> list[tuple[str, int]]:
        """`actor`'s pending timers as (id, due), soonest first."""
        pending = [(id, due) for (owner, id), (due, _) in self._timers.items() if owner == actor]
        return sorted(pending, key=lambda timer: (timer[1], timer[0]))

    def timer_payload(self, actor: str, id: str) -> Any:
        """What is stored with `actor`'s pending timer `id`, decoded; KeyError if there is none."""
        return decode(self._timers[(actor, id)][1])

    def _build(self, config: Mapping[str, Any] | None) -> Plugin:
        # Through JSON text, as the hub passes it: values JSON cannot carry fail here, not later.
        try:
            return create(self._plugin_class, json.dumps({} if config is None else config))
        except Exception as e:
            raise PluginError(failure_message(e)) from e

    def _call(self, handler: Callable[[Context, Any], None], subject: Event | Timer) -> list[Output]:
        call = _Call(self, subject.actor)
        cx = Context(subject.actor, call)
        try:
            handler(cx, subject)
        except Exception as e:
            raise PluginError(failure_message(e)) from e
        call.commit()
        return cx.outputs


class _Call:
    """The host side of one call for one actor: reads see the call's own writes, which reach the
    hub's stores only when the call succeeds."""

    def __init__(self, hub: TestHub, actor: str) -> None:
        self._hub = hub
        self._actor = actor
        self._state: dict[str, bytes | None] = {}
        self._timers: dict[str, tuple[int, bytes] | None] = {}

    def now(self) -> int:
        return self._hub._now

    def state_get(self, key: str) -> bytes | None:
        if key in self._state:
            return self._state[key]
        return self._hub._state.get((self._actor, key))

    def state_set(self, key: str, value: bytes) -> None:
        self._state[key] = value

    def state_delete(self, key: str) -> None:
        self._state[key] = None

    def timer_set(self, id: str, due: int, payload: bytes) -> None:
        self._timers[id] = (due, payload)

    def timer_cancel(self, id: str) -> None:
        self._timers[id] = None

    def profile(self) -> bytes | None:
        return self._hub._profiles.get(self._actor)

    def log(self, level: Level, message: str) -> None:
        self._hub.logs.append(f"{level.name.lower()}: {message}")

    def commit(self) -> None:
        _apply(self._state, self._actor, self._hub._state)
        _apply(self._timers, self._actor, self._hub._timers)


_V = TypeVar("_V")


def _apply(writes: dict[str, _V | None], actor: str, store: dict[tuple[str, str], _V]) -> None:
    """Write a call's writes for `actor` into `store`, None meaning deleted."""
    for key, value in writes.items():
        if value is None:
            store.pop((actor, key), None)
        else:
            store[(actor, key)] = value
