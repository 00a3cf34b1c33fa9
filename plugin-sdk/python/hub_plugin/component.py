"""The component side of a Python plugin: the class componentize-py exports as the `plugin` world.

Importable only inside a componentize-py build (or next to bindings from `componentize-py
bindings`), where the modules generated from wit/plugin.wit exist. componentize-py 0.25 calls the
world's exports as methods of a class named `WitWorld` in the app module, and turns a raised
`componentize_py_types.Err(value)` into `result::err(value)`; any other exception escaping an
export traps the instance. So every exception of the plugin is caught here and becomes `Err`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wit_world
from componentize_py_types import Err
from wit_world.imports import clock, profile, state, timers
from wit_world.imports import log as wit_log
from wit_world.imports import types as wit

from hub_plugin.context import Context, Level
from hub_plugin.plugin import Plugin, create, failure_message
from hub_plugin.types import Action, Emit, Event, Output, Timer


class _WitHost:
    """The host of every call: the hub itself scopes each import to the plugin and the call's actor."""

    @staticmethod
    def now() -> int:
        return clock.now()

    @staticmethod
    def state_get(key: str) -> bytes | None:
        return state.get(key)

    @staticmethod
    def state_set(key: str, value: bytes) -> None:
        state.set(key, value)

    @staticmethod
    def state_delete(key: str) -> None:
        state.delete(key)

    @staticmethod
    def timer_set(id: str, due: int, payload: bytes) -> None:
        timers.set(id, due, payload)

    @staticmethod
    def timer_cancel(id: str) -> None:
        timers.cancel(id)

    @staticmethod
    def profile() -> bytes | None:
        return profile.get()

    @staticmethod
    def log(level: Level, message: str) -> None:
        wit_log.log(wit_log.Level(level.value), message)


_HOST = _WitHost()


def world(plugin_class: type[Plugin]) -> type[wit_world.WitWorld]:
    """The `WitWorld` class serving `plugin_class`. Its description is checked now, so a bad
    name or pattern fails the build rather than the deployment."""
    description = plugin_class.describe()
    description.validate()
    wit_description = wit.Description(
        description.name, description.version, list(description.subscribes), list(description.emits)
    )
    # The deployment's plugin, built by `init`. componentize-py 0.25 makes one WitWorld object
    # per export (the `self` of `init` is not the `self` of `on_event`), so it lives here; the hub
    # never calls an instance re-entrantly.
    deployed: Plugin | None = None

    def call(handler: Callable[[Any, Context, Any], None], subject: Event | Timer) -> list[wit.Output]:
        if deployed is None:
            raise Err("plugin called before init")
        cx = Context(subject.actor, _HOST)
        try:
            handler(deployed, cx, subject)
            return [_to_wit(output) for output in cx.outputs]
        except BaseException as e:
            raise Err(failure_message(e)) from None

    class WitWorld(wit_world.WitWorld):
        def describe(self) -> wit.Description:
            return wit_description

        def init(self, config: str) -> None:
            nonlocal deployed
            try:
                plugin = create(plugin_class, config)
            except BaseException as e:
                raise Err(failure_message(e)) from None
            deployed = plugin

        def on_event(self, event: wit.Event) -> list[wit.Output]:
            return call(
                plugin_class.on_event,
                Event(event.id, event.kind, event.actor, event.time, event.source, event.payload),
            )

        def on_timer(self, timer: wit.Timer) -> list[wit.Output]:
            return call(plugin_class.on_timer, Timer(timer.id, timer.actor, timer.due, timer.payload))

    return WitWorld


def _to_wit(output: Output) -> wit.Output:
    if isinstance(output, Action):
        return wit.Output_Action(
            wit.Action(output.name, output.category, output.priority, output.dedup_key, output.raw_payload)
        )
    if isinstance(output, Emit):
        return wit.Output_Emit(wit.Emitted(output.kind, output.actor, output.raw_payload))
    return wit.Output_Deliver(wit.Delivery(output.channel, output.target, output.body))
