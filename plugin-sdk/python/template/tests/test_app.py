import unittest

from app import Scenario
from hub_plugin import MINUTE, Action, PluginError
from hub_plugin.testing import TestHub


class ScenarioTest(unittest.TestCase):
    def view(self, hub: TestHub, actor: str) -> None:
        self.assertEqual(hub.send(hub.event("page.viewed", actor, {"page": "/"})), [])

    def test_a_visitor_who_does_not_sign_up_gets_the_offer(self) -> None:
        hub = TestHub(Scenario)
        for _ in range(3):
            self.view(hub, "alice")
        self.assertEqual(hub.advance(10 * MINUTE - 1), [])
        [offer] = hub.advance(1)
        self.assertIsInstance(offer, Action)
        self.assertEqual((offer.name, offer.category, offer.priority), ("offer.welcome", "offer", 10))
        self.assertEqual(offer.payload, {"views": 3})

    def test_signing_up_cancels_the_offer(self) -> None:
        hub = TestHub(Scenario, {"threshold": 2})
        self.view(hub, "bob")
        self.view(hub, "bob")
        self.assertEqual(hub.timers("bob"), [("welcome", hub.now + 10 * MINUTE)])
        hub.send(hub.event("account.created", "bob"))
        self.assertEqual(hub.timers("bob"), [])
        self.assertEqual(hub.advance("1h"), [])

    def test_below_the_threshold_nothing_happens(self) -> None:
        hub = TestHub(Scenario)
        self.view(hub, "carol")
        self.view(hub, "carol")
        self.assertEqual(hub.advance("1h"), [])

    def test_a_threshold_of_zero_is_refused(self) -> None:
        with self.assertRaisesRegex(PluginError, "threshold must be at least 1"):
            TestHub(Scenario, {"threshold": 0})


if __name__ == "__main__":
    unittest.main()
