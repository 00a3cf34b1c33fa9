"""Payment rescue: a customer whose payments keep failing gets a support callback, unless they
manage to pay by themselves first.

`threshold` `payment.failed` events of one customer within a sliding `window` open a grace
period: the timer `callback`, due `grace` after the failure that reached the threshold. A
`payment.succeeded` before then cancels it and forgets the failures: the customer rescued
themselves and nothing happens. If the timer fires, the payment did not happen, and the plugin
proposes the action `support.callback` (category `support`), at `priority`, 50 more for a
customer whose profile says `"tier": "gold"`.

Config (JSON object, every field optional): `threshold` (3), `window` ("10m"), `grace` ("15m"),
`priority` (100).
"""

from __future__ import annotations

from typing import Any

from hub_plugin import Config, Context, Description, Event, Plugin, Timer, export

GOLD_BONUS = 50
CALLBACK = "callback"
# State, one key per customer in trouble: {"times": [ms…], "last_reason", "last_amount",
# "callback_due": ms or None}. One key, so a call reads and writes state once.
TROUBLE = "trouble"


class PaymentRescue(Plugin):
    @classmethod
    def describe(cls) -> Description:
        return Description(
            "payment-rescue",
            "0.1.0",
            subscribes=["payment.failed", "payment.succeeded"],
            emits=["support.callback"],
        )

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = Config(config, threshold=3, window="10m", grace="15m", priority=100)
        self.threshold = cfg.integer("threshold", minimum=1)
        self.window_ms = cfg.duration("window", minimum=1)
        self.grace_ms = cfg.duration("grace")
        self.priority = cfg.integer("priority", minimum=-(2**31), maximum=2**31 - 1 - GOLD_BONUS)

    def on_event(self, cx: Context, event: Event) -> None:
        if event.kind == "payment.succeeded":
            cx.timers.cancel(CALLBACK)
            cx.state.delete(TROUBLE)
            return
        trouble = cx.state.get(TROUBLE) or {"times": [], "callback_due": None}
        if trouble["callback_due"] is None:
            # Only failures inside the window count towards opening a grace period; once one is
            # open, every further failure belongs to the same episode.
            oldest = event.time - self.window_ms
            trouble["times"] = [t for t in trouble["times"] if t > oldest]
        trouble["times"].append(event.time)
        failure = event.payload
        trouble["last_reason"] = failure.get("reason")
        trouble["last_amount"] = failure.get("amount")
        if trouble["callback_due"] is None and len(trouble["times"]) >= self.threshold:
            due = event.time + self.grace_ms
            cx.timers.set_at(CALLBACK, due)
            trouble["callback_due"] = due
        cx.state.set(TROUBLE, trouble)

    def on_timer(self, cx: Context, timer: Timer) -> None:
        trouble = cx.state.get(TROUBLE)
        cx.state.delete(TROUBLE)
        if trouble is None:
            return  # the state was removed behind the plugin's back: nobody to call about
        profile = cx.profile() or {}
        gold = profile.get("tier") == "gold"
        cx.act(
            "support.callback",
            "support",
            priority=self.priority + (GOLD_BONUS if gold else 0),
            payload={
                "failures": len(trouble["times"]),
                "last_reason": trouble.get("last_reason"),
                "last_amount": trouble.get("last_amount"),
                "name": profile.get("name"),
            },
            dedup_key=f"payment-rescue:{cx.actor}:{timer.due}",
        )


WitWorld = export(PaymentRescue)
