"""Write hub plugins in Python.

A plugin is a subclass of `Plugin`, exported from the app module with `WitWorld = export(MyPlugin)`
and built into a WebAssembly component with componentize-py. The hub calls it one event at a time
per actor; everything it may touch (state, timers, profile, clock, log) goes through the `Context`
it is handed, scoped to this plugin and the current actor.

The same code runs under plain CPython: `hub_plugin.testing.TestHub` stands in for the hub
(state, timers, profiles and a virtual clock in memory), so plugin logic is tested with
`python3 -m unittest`.
"""

from __future__ import annotations

from hub_plugin.config import Config
from hub_plugin.context import Context, Level, State, Timers
from hub_plugin.duration import DAY, HOUR, MINUTE, SECOND, millis
from hub_plugin.plugin import Plugin
from hub_plugin.types import Action, Deliver, Description, Emit, Event, Output, PluginError, Timer

__all__ = [
    "DAY",
    "HOUR",
    "MINUTE",
    "SECOND",
    "Action",
    "Config",
    "Context",
    "Deliver",
    "Description",
    "Emit",
    "Event",
    "Level",
    "Output",
    "Plugin",
    "PluginError",
    "State",
    "Timer",
    "Timers",
    "export",
    "millis",
]


def export(plugin_class: type[Plugin]) -> type | None:
    """The class componentize-py exports for `plugin_class`; write `WitWorld = export(MyPlugin)` at
    the top level of the app module, the name componentize-py looks for.

    Outside a component build (plain CPython, in tests) there are no WIT bindings: this returns
    None, and `hub_plugin.testing.TestHub` runs the plugin instead."""
    try:
        from hub_plugin.component import world
    except ModuleNotFoundError as e:
        if e.name in ("wit_world", "componentize_py_types"):
            return None
        raise
    return world(plugin_class)
