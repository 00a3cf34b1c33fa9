import json
import unittest
from pathlib import Path

from app import PaymentRescue
from hub_plugin import MINUTE, Action, Event, PluginError
from hub_plugin.testing import TestHub
from hub_plugin.types import encode_map

HERE = Path(__file__).resolve().parent.parent


class PaymentRescueTest(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = TestHub(PaymentRescue)

    def fail_payment(self, actor: str = "c1", reason: str = "card_declined", amount: float = 42.5) -> list:
        return self.hub.send(self.hub.event("payment.failed", actor, {"reason": reason, "amount": amount}))

    def fail_three_times(self, actor: str = "c1") -> None:
        for reason in ("card_declined", "insufficient_funds", "card_expired"):
            self.assertEqual(self.fail_payment(actor, reason), [])
            self.hub.advance("1m")

    def test_callback_when_the_customer_has_not_paid_after_the_grace_period(self) -> None:
        self.fail_three_times()
        third_failure = self.hub.now - MINUTE
        self.assertEqual(self.hub.timers("c1"), [("callback", third_failure + 15 * MINUTE)])
        self.assertEqual(self.hub.advance("13m"), [])  # 14 minutes after the third failure
        [action] = self.hub.advance("1m")
        self.assertIsInstance(action, Action)
        self.assertEqual((action.name, action.category, action.priority), ("support.callback", "support", 100))
        self.assertEqual(action.dedup_key, f"payment-rescue:c1:{third_failure + 15 * MINUTE}")
        self.assertEqual(
            action.payload,
            {"failures": 3, "last_reason": "card_expired", "last_amount": 42.5, "name": None},
        )
        self.assertIsNone(self.hub.state("c1", "trouble"))
        self.assertEqual(self.hub.advance("1h"), [])  # once only

    def test_no_callback_when_the_customer_pays_within_the_grace_period(self) -> None:
        self.fail_three_times()
        self.hub.advance("10m")
        self.assertEqual(self.hub.send(self.hub.event("payment.succeeded", "c1", {"amount": 42.5})), [])
        self.assertEqual(self.hub.timers("c1"), [])
        self.assertIsNone(self.hub.state("c1", "trouble"))
        self.assertEqual(self.hub.advance("1h"), [])

    def test_below_the_threshold_nothing_happens(self) -> None:
        self.fail_payment()
        self.fail_payment()
        self.assertEqual(self.hub.timers("c1"), [])
        self.assertEqual(self.hub.advance("1h"), [])

    def test_failures_outside_the_window_do_not_count(self) -> None:
        self.fail_payment()
        self.fail_payment()
        self.hub.advance("11m")
        self.fail_payment()
        self.assertEqual(self.hub.timers("c1"), [])
        self.assertEqual(self.hub.state("c1", "trouble")["times"], [self.hub.now])

    def test_failures_during_the_grace_period_join_the_callback_without_moving_it(self) -> None:
        self.fail_three_times()
        due = self.hub.timers("c1")
        self.hub.advance("12m")  # the first failures are out of the window by now: still the same episode
        self.fail_payment(reason="fraud_suspected", amount=99)
        self.assertEqual(self.hub.timers("c1"), due)
        [action] = self.hub.advance("15m")
        self.assertEqual(action.payload["failures"], 4)
        self.assertEqual(action.payload["last_reason"], "fraud_suspected")
        self.assertEqual(action.payload["last_amount"], 99)

    def test_gold_customers_get_a_higher_priority_and_are_called_by_name(self) -> None:
        self.hub.set_profile("c1", {"name": "Ada", "tier": "gold"})
        self.fail_three_times()
        [action] = self.hub.advance("15m")
        self.assertEqual(action.priority, 150)
        self.assertEqual(action.payload["name"], "Ada")

    def test_customers_are_counted_apart(self) -> None:
        self.fail_payment("c1")
        self.fail_payment("c2")
        self.fail_payment("c1")
        self.fail_payment("c2")
        self.fail_payment("c1")
        self.assertEqual([t for t, _ in self.hub.timers("c1")], ["callback"])
        self.assertEqual(self.hub.timers("c2"), [])

    def test_config_sets_threshold_grace_and_priority(self) -> None:
        hub = TestHub(PaymentRescue, {"threshold": 1, "grace": "30s", "priority": 7})
        hub.send(hub.event("payment.failed", "c1", {}))
        self.assertEqual(hub.advance("29s"), [])
        [action] = hub.advance("1s")
        self.assertEqual(action.priority, 7)
        self.assertEqual(action.payload["last_reason"], None)

    def test_bad_config_is_refused_with_a_clear_message(self) -> None:
        cases = {
            "threshold": ({"threshold": 0}, "invalid config: threshold must be at least 1, not 0"),
            "window": ({"window": "ten minutes"}, 'invalid config: window: invalid duration "ten minutes"'),
            "grace": ({"grace": -1}, "invalid config: grace: a duration must not be negative: -1"),
            "priority": ({"priority": "high"}, 'invalid config: priority must be an integer, not "high"'),
            "unknown": ({"treshold": 2}, "invalid config: unknown field treshold"),
        }
        for field, (config, message) in cases.items():
            with self.subTest(field), self.assertRaises(PluginError) as refused:
                TestHub(PaymentRescue, config)
            self.assertTrue(str(refused.exception).startswith(message), str(refused.exception))


class RecordedEventsTest(unittest.TestCase):
    def test_the_recorded_file_calls_back_the_two_customers_who_never_paid(self) -> None:
        """events.jsonl, replayed on the virtual clock as `hub plugin test` replays it."""
        hub = TestHub(PaymentRescue)
        for actor, profile in json.loads((HERE / "profiles.json").read_text()).items():
            hub.set_profile(actor, profile)
        outputs = []
        for line in (HERE / "events.jsonl").read_text().splitlines():
            record = json.loads(line)
            outputs += hub.advance(record["time"] - hub.now)
            payload = encode_map(record["payload"])
            outputs += hub.send(Event(record["id"], record["kind"], record["actor"], record["time"], "test", payload))
        outputs += hub.advance("1h")
        third_failure = {"c1": 1796000120000, "c3": 1796000140000}
        self.assertEqual(
            [(a.dedup_key, a.priority, a.payload) for a in outputs],
            [
                (
                    f"payment-rescue:c1:{third_failure['c1'] + 15 * MINUTE}",
                    100,
                    {"failures": 3, "last_reason": "card_declined", "last_amount": 49.9, "name": "Alice Martin"},
                ),
                (
                    f"payment-rescue:c3:{third_failure['c3'] + 15 * MINUTE}",
                    150,
                    {"failures": 3, "last_reason": "card_declined", "last_amount": 310.5, "name": "Chlo\u00e9 Dubois"},
                ),
            ],
        )


if __name__ == "__main__":
    unittest.main()
