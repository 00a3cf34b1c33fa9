"""The in-memory hub, and the Context as plugins see it through it."""

import unittest
from typing import Any

from hub_plugin import Action, Config, Context, Deliver, Description, Emit, Event, Level, Plugin, PluginError, Timer
from hub_plugin.testing import EPOCH, TestHub


class Script(Plugin):
    """Does what each event's payload says, so one plugin exercises the whole Context."""

    @classmethod
    def describe(cls) -> Description:
        return Description("script", "0.1.0", subscribes=["do.*"], emits=["done", "ping"])

    def __init__(self, config: dict[str, Any]) -> None:
        self.tag = Config(config, tag="").string("tag", allow_empty=True)

    def on_event(self, cx: Context, event: Event) -> None:
        steps = event.payload
        for key, value in steps.get("set", {}).items():
            cx.state.set(key, value)
        for key in steps.get("delete", []):
            cx.state.delete(key)
        for id, delay in steps.get("timers", {}).items():
            cx.timers.set_after(id, delay, {"id": id})
        for id in steps.get("cancel", []):
            cx.timers.cancel(id)
        if "emit" in steps:
            cx.emit("done", {"tag": self.tag, "seen": cx.state.get("seen", 0)}, actor=steps["emit"])
        if "act" in steps:
            cx.act("offer.welcome", "offer", steps["act"], {"name": (cx.profile() or {}).get("name")}, "k1")
        if "deliver" in steps:
            cx.deliver("email", "a@example.com", steps["deliver"])
        if "log" in steps:
            cx.log(Level.WARN, steps["log"])
        if "fail" in steps:
            raise ValueError(steps["fail"])

    def on_timer(self, cx: Context, timer: Timer) -> None:
        cx.emit("ping", {"id": timer.payload["id"], "due": timer.due, "now": cx.now()})
        follow_up = cx.state.get("follow_up")
        if follow_up and timer.id != "follow-up":
            cx.timers.set_after("follow-up", follow_up, {"id": "follow-up"})


class TestHubTest(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = TestHub(Script)

    def do(self, actor: str = "u1", **steps: Any) -> list:
        return self.hub.send(self.hub.event("do.it", actor, steps))

    def test_state_round_trips_through_messagepack_per_actor(self) -> None:
        value = {"times": [EPOCH, EPOCH + 1], "amount": 9.5, "tags": ["a"], "raw": b"\x01", "none": None}
        self.do(set={"v": value, "n": 3})
        self.assertEqual(self.hub.state("u1", "v"), value)
        self.assertEqual(self.hub.state("u1", "n"), 3)
        self.assertIsNone(self.hub.state("u2", "v"))
        self.do(delete=["v"])
        self.assertIsNone(self.hub.state("u1", "v"))

    def test_outputs_come_in_order_with_decoded_payloads(self) -> None:
        self.hub.set_profile("u1", {"name": "Ada"})
        out = self.do(set={"seen": 2}, emit="u9", act=75, deliver="Hello")
        self.assertEqual(
            out,
            [
                Emit("done", "u9", out[0].raw_payload),
                Action("offer.welcome", "offer", 75, "k1", out[1].raw_payload),
                Deliver("email", "a@example.com", b"Hello"),
            ],
        )
        self.assertEqual(out[0].payload, {"tag": "", "seen": 2})  # the call reads its own write
        self.assertEqual(out[1].payload, {"name": "Ada"})

    def test_timers_fire_in_due_order_on_the_virtual_clock(self) -> None:
        self.do("u1", timers={"late": "10m", "early": "1m"})
        self.do("u2", timers={"middle": 5 * 60_000})
        self.assertEqual(self.hub.timers("u1"), [("early", EPOCH + 60_000), ("late", EPOCH + 600_000)])
        self.assertEqual(self.hub.advance("30s"), [])
        fired = self.hub.advance("1h")
        self.assertEqual([o.payload["id"] for o in fired], ["early", "middle", "late"])
        self.assertEqual([o.payload["now"] for o in fired], [o.payload["due"] for o in fired])
        self.assertEqual(self.hub.now, EPOCH + 30_000 + 3_600_000)
        self.assertEqual(self.hub.timers("u1"), [])

    def test_timers_set_while_advancing_fire_in_the_same_advance(self) -> None:
        self.do(set={"follow_up": "2m"}, timers={"first": "1m"})
        fired = self.hub.advance("3m")
        self.assertEqual(
            [(o.payload["id"], o.payload["due"]) for o in fired],
            [("first", EPOCH + 60_000), ("follow-up", EPOCH + 180_000)],
        )

    def test_setting_a_timer_again_replaces_it_and_cancel_removes_it(self) -> None:
        self.do(timers={"t": "1m"})
        self.do(timers={"t": "5m"})
        self.assertEqual(self.hub.timers("u1"), [("t", EPOCH + 300_000)])
        self.assertEqual(self.hub.timer_payload("u1", "t"), {"id": "t"})
        self.do(cancel=["t", "never-set"])
        self.assertEqual(self.hub.timers("u1"), [])

    def test_events_of_kinds_not_subscribed_never_reach_the_plugin(self) -> None:
        self.assertEqual(self.hub.send(self.hub.event("other.kind", "u1", {"fail": "no"})), [])

    def test_an_exception_fails_the_call_with_its_message_and_where_it_was_raised(self) -> None:
        with self.assertRaises(PluginError) as failed:
            self.do(fail="boom")
        message = str(failed.exception)
        self.assertRegex(message, r"^ValueError: boom \(at test_testing\.py:\d+ in on_event\)$")
        self.assertIsInstance(failed.exception.__cause__, ValueError)

    def test_a_failed_call_leaves_nothing_behind(self) -> None:
        self.do(set={"kept": 1}, timers={"kept": "1m"})
        with self.assertRaises(PluginError):
            self.do(set={"kept": 2, "lost": 1}, delete=["kept"], timers={"lost": "1m"}, cancel=["kept"], fail="x")
        self.assertEqual(self.hub.state("u1", "kept"), 1)
        self.assertIsNone(self.hub.state("u1", "lost"))
        self.assertEqual(self.hub.timers("u1"), [("kept", EPOCH + 60_000)])

    def test_wrong_values_fail_the_call_instead_of_reaching_the_hub(self) -> None:
        class Wrong(Script):
            def on_event(self, cx: Context, event: Event) -> None:
                getattr(cx, event.payload["call"])(*event.payload["args"])

        hub = TestHub(Wrong)
        cases = {
            "priority range": ("act", ["a", "b", 2**31], "priority 2147483648 is out of range"),
            "priority type": ("act", ["a", "b", "high"], "priority must be an int, not str"),
            "kind type": ("emit", [7], "event kind must be a str, not int"),
            "payload type": ("emit", ["k", [1]], "a payload must be a dict, not list"),
            "body type": ("deliver", ["email", "x", 5], "a delivery body must be bytes or str, not int"),
            "level": ("log", ["info", "hi"], "a log level must be a hub_plugin.Level"),
        }
        for case, (call, args, message) in cases.items():
            with self.subTest(case), self.assertRaisesRegex(PluginError, message):
                hub.send(hub.event("do.it", "u1", {"call": call, "args": args}))

    def test_logs_are_kept_in_order(self) -> None:
        self.do(log="careful")
        self.assertEqual(self.hub.logs, ["warn: careful"])

    def test_a_refused_config_fails_the_start_and_a_reconfiguration_keeps_the_old_plugin(self) -> None:
        with self.assertRaisesRegex(PluginError, "^invalid config: unknown field tga"):
            TestHub(Script, {"tga": "x"})
        self.do(set={"seen": 1})
        self.hub.reconfigure({"tag": "v2"})
        self.assertEqual(self.do(emit="u1")[0].payload, {"tag": "v2", "seen": 1})
        with self.assertRaises(PluginError):
            self.hub.reconfigure({"tag": 2})
        self.assertEqual(self.do(emit="u1")[0].payload["tag"], "v2")

    def test_a_bad_description_is_refused_before_any_call(self) -> None:
        class Nameless(Script):
            @classmethod
            def describe(cls) -> Description:
                return Description("", "0.1.0", ["do.*"])

        with self.assertRaisesRegex(PluginError, "name '' must be"):
            TestHub(Nameless)


if __name__ == "__main__":
    unittest.main()
