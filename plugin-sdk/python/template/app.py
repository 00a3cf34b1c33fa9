"""{{name}}: a visitor who viewed `threshold` pages and did not sign up within `wait` afterwards
gets the offer `offer.welcome`.

"Did not sign up" is a non-event: only time passing shows it, so reaching the threshold sets a
durable timer, and a sign-up cancels it.

Config (JSON object, every field optional): `threshold` (3), `wait` ("10m"), `priority` (10).
"""

from __future__ import annotations

from typing import Any

from hub_plugin import Config, Context, Description, Event, Plugin, Timer, export

VIEWS = "views"
WELCOME = "welcome"


class Scenario(Plugin):
    @classmethod
    def describe(cls) -> Description:
        return Description(
            "{{name}}",
            "0.1.0",
            subscribes=["page.viewed", "account.created"],
            emits=["offer.welcome"],
        )

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = Config(config, threshold=3, wait="10m", priority=10)
        self.threshold = cfg.integer("threshold", minimum=1)
        self.wait_ms = cfg.duration("wait")
        self.priority = cfg.integer("priority", minimum=-(2**31), maximum=2**31 - 1)

    def on_event(self, cx: Context, event: Event) -> None:
        if event.kind == "account.created":
            cx.timers.cancel(WELCOME)
            cx.state.delete(VIEWS)
            return
        views = cx.state.get(VIEWS, 0) + 1
        cx.state.set(VIEWS, views)
        if views == self.threshold:
            cx.timers.set_at(WELCOME, event.time + self.wait_ms, {"views": views})

    def on_timer(self, cx: Context, timer: Timer) -> None:
        cx.act("offer.welcome", "offer", priority=self.priority, payload=timer.payload, dedup_key="welcome")


# What componentize-py builds into the component (None under plain CPython, where tests run).
WitWorld = export(Scenario)
