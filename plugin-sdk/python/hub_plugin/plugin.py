"""The plugin base class, and how a deployment's plugin comes to be and how its failures read."""

from __future__ import annotations

from typing import Any

from hub_plugin.config import Config, decode_config
from hub_plugin.context import Context
from hub_plugin.types import Description, Event, PluginError, Timer


class Plugin:
    """A hub plugin: a mapper, a scenario or a delivery renderer.

    One instance is built per deployment from its JSON config and then serves every actor: keep
    per-actor data in `cx.state`, never on `self`, because the hub may rebuild the instance at
    any time (after a failure, a restart, or a config change).
    """

    @classmethod
    def describe(cls) -> Description:
        """Name, version, subscriptions and outputs. Must not depend on config."""
        raise NotImplementedError(f"{cls.__name__}.describe() must say who the plugin is")

    def __init__(self, config: dict[str, Any]) -> None:
        """Build from the deployment's config (a JSON object); raise PluginError to refuse it.
        This default is for plugins without parameters: it refuses every field."""
        Config(config)

    def on_event(self, cx: Context, event: Event) -> None:
        """Handle one event of one actor; raise to send the event to the dead letters."""
        raise NotImplementedError(f"{type(self).__name__} does not handle events")

    def on_timer(self, cx: Context, timer: Timer) -> None:
        """A timer this plugin set for `timer.actor` came due."""


def create(plugin_class: type[Plugin], config: str) -> Plugin:
    """The plugin of a deployment whose config is the JSON text `config` (empty means `{}`)."""
    return plugin_class(decode_config(config))


def failure_message(error: BaseException) -> str:
    """What the hub is told when a call fails: a PluginError's own message; for anything else
    its type, message and the line that raised it, so a dead letter points at the bug."""
    if isinstance(error, PluginError):
        return str(error)
    message = f"{type(error).__name__}: {error}"
    trace = error.__traceback__
    if trace is None:
        return message
    while trace.tb_next is not None:
        trace = trace.tb_next
    code = trace.tb_frame.f_code
    return f"{message} (at {code.co_filename.rsplit('/', 1)[-1]}:{trace.tb_lineno} in {code.co_name})"
