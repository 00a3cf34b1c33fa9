import unittest

from hub_plugin import Description, Event, PluginError, Timer
from hub_plugin.pattern import kind_matches, pattern_error
from hub_plugin.types import decode, encode, encode_map


class MessagePackTest(unittest.TestCase):
    def test_values_round_trip(self) -> None:
        value = {
            "times": [1_767_225_600_000, -1, 0, 2**63 - 1],
            "amount": 42.5,
            "reason": "carte refus\u00e9e",
            "gold": True,
            "note": None,
            "raw": b"\x00\xff",
            "nested": {"a": [{"b": 1}]},
        }
        self.assertEqual(decode(encode(value)), value)

    def test_encoding_is_what_rmp_serde_writes_for_a_struct(self) -> None:
        # rmp_serde::to_vec_named of struct { failures: u32 = 3, last_reason: Option<String> = None }:
        # a fixmap of 2, fixstr keys, positive fixint, nil.
        rust = b"\x82\xa8failures\x03\xablast_reason\xc0"
        self.assertEqual(encode({"failures": 3, "last_reason": None}), rust)
        self.assertEqual(decode(rust), {"failures": 3, "last_reason": None})

    def test_every_integer_and_float_width_decodes(self) -> None:
        # Rust writes an i64 in the smallest format that holds it; f32 and f64 as such.
        self.assertEqual(decode(b"\xcf" + (1_767_225_600_000).to_bytes(8, "big")), 1_767_225_600_000)
        self.assertEqual(decode(b"\xd3" + (-5).to_bytes(8, "big", signed=True)), -5)
        self.assertEqual(decode(b"\xd0\xfb"), -5)
        self.assertEqual(decode(b"\xcb\x40\x45\x40\x00\x00\x00\x00\x00"), 42.5)
        self.assertEqual(decode(b"\xca\x40\x20\x00\x00"), 2.5)

    def test_an_empty_payload_reads_as_an_empty_map(self) -> None:
        self.assertEqual(decode(b""), {})
        self.assertEqual(encode_map(None), encode({}))

    def test_what_is_not_messagepack_is_a_plugin_error(self) -> None:
        with self.assertRaisesRegex(PluginError, "cannot decode payload"):
            decode(b"\xc1")
        with self.assertRaisesRegex(PluginError, "cannot encode object"):
            encode(object())

    def test_payloads_for_the_hub_are_maps(self) -> None:
        with self.assertRaisesRegex(PluginError, "a payload must be a dict, not list"):
            encode_map([1, 2])


class LazyPayloadTest(unittest.TestCase):
    def test_an_event_decodes_its_payload_once_when_read(self) -> None:
        event = Event("e1", "payment.failed", "c1", 5, "test", b"\xc1")  # not MessagePack
        self.assertEqual(event.kind, "payment.failed")  # no decoding so far: no error
        with self.assertRaisesRegex(PluginError, "cannot decode payload"):
            _ = event.payload
        event = Event("e2", "payment.failed", "c1", 5, "test", encode({"amount": 3}))
        self.assertIs(event.payload, event.payload)
        self.assertEqual(event.payload, {"amount": 3})

    def test_a_timer_decodes_what_was_stored_with_it(self) -> None:
        self.assertEqual(Timer("t", "c1", 9, encode([1, "a"])).payload, [1, "a"])

    def test_delivery_plugins_read_the_action_name(self) -> None:
        self.assertEqual(Event("a", "action.offer.welcome", "c1", 0, "hub", b"").action_name, "offer.welcome")
        self.assertIsNone(Event("a", "page.viewed", "c1", 0, "hub", b"").action_name)


class DescriptionTest(unittest.TestCase):
    def test_a_good_description_passes(self) -> None:
        Description("payment-rescue_2", "0.1.0", ["payment.*", "action.>"]).validate()

    def test_what_the_hub_would_refuse_is_refused(self) -> None:
        cases = {
            "name": (Description("pay ment", "1", ["a"]), "name 'pay ment' must be"),
            "long name": (Description("x" * 65, "1", ["a"]), "must be 1-64 characters"),
            "no subscription": (Description("p", "1", []), "subscribes to no event kinds"),
            "bad pattern": (Description("p", "1", ["a.>.b"]), "'>' must be the last token"),
        }
        for case, (description, message) in cases.items():
            with self.subTest(case), self.assertRaisesRegex(PluginError, message):
                description.validate()


class PatternTest(unittest.TestCase):
    def test_wildcards_match_like_nats_subjects(self) -> None:
        self.assertTrue(kind_matches("cart.updated", "cart.updated"))
        self.assertTrue(kind_matches("cart.*", "cart.updated"))
        self.assertFalse(kind_matches("cart.*", "cart.updated.more"))
        self.assertTrue(kind_matches("web.>", "web.a.b"))
        self.assertFalse(kind_matches("web.>", "web"))
        self.assertFalse(kind_matches("cart.updated", "cart"))
        self.assertFalse(kind_matches("cart", "cart.updated"))
        self.assertTrue(kind_matches(">", "anything.at.all"))

    def test_malformed_patterns_are_explained(self) -> None:
        self.assertIsNone(pattern_error("cart.*"))
        self.assertIn("empty token", pattern_error("a..b"))
        self.assertIn("whole tokens", pattern_error("ca*"))
        self.assertIn("empty", pattern_error(""))


if __name__ == "__main__":
    unittest.main()
