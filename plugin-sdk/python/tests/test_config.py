import unittest

from hub_plugin import Config, Plugin, PluginError
from hub_plugin.config import decode_config
from hub_plugin.plugin import create


class DecodeConfigTest(unittest.TestCase):
    def test_an_empty_config_is_an_empty_object(self) -> None:
        self.assertEqual(decode_config(""), {})
        self.assertEqual(decode_config("  \n"), {})
        self.assertEqual(decode_config('{"a": 1}'), {"a": 1})

    def test_a_config_is_a_json_object(self) -> None:
        with self.assertRaisesRegex(PluginError, "^invalid config: not JSON"):
            decode_config("{threshold: 3}")
        with self.assertRaisesRegex(PluginError, r"^invalid config: a JSON object is expected, not \[3\]"):
            decode_config("[3]")


class ConfigTest(unittest.TestCase):
    def test_defaults_fill_what_is_not_given(self) -> None:
        cfg = Config({"threshold": 5}, threshold=3, window="10m", text="hi", on=False, ratio=0.5)
        self.assertEqual(cfg.integer("threshold"), 5)
        self.assertEqual(cfg.duration("window"), 600_000)
        self.assertEqual(cfg.string("text"), "hi")
        self.assertIs(cfg.boolean("on"), False)
        self.assertEqual(cfg.number("ratio"), 0.5)

    def test_unknown_fields_are_refused_and_the_known_ones_listed(self) -> None:
        with self.assertRaises(PluginError) as refused:
            Config({"treshold": 3, "zone": 1}, threshold=3, window="10m")
        self.assertEqual(
            str(refused.exception), "invalid config: unknown field treshold, zone (known fields: threshold, window)"
        )

    def test_bad_values_are_named_with_what_was_expected(self) -> None:
        cases = [
            ({"n": 0}, lambda c: c.integer("n", minimum=1), "n must be at least 1, not 0"),
            ({"n": 11}, lambda c: c.integer("n", maximum=10), "n must be at most 10, not 11"),
            ({"n": 2.5}, lambda c: c.integer("n"), "n must be an integer, not 2.5"),
            ({"n": True}, lambda c: c.integer("n"), "n must be an integer, not true"),
            ({"n": "3"}, lambda c: c.number("n"), 'n must be a number, not "3"'),
            ({"n": -1}, lambda c: c.number("n", minimum=0), "n must be at least 0, not -1"),
            ({"n": "soon"}, lambda c: c.duration("n"), 'n: invalid duration "soon": a number is expected at 0'),
            ({"n": 0}, lambda c: c.duration("n", minimum=1), "n must be at least 1 ms, not 0"),
            ({"n": None}, lambda c: c.string("n"), "n must be a non-empty string, not null"),
            ({"n": ""}, lambda c: c.string("n"), 'n must be a non-empty string, not ""'),
            ({"n": "yes"}, lambda c: c.boolean("n"), 'n must be true or false, not "yes"'),
        ]
        for given, read, message in cases:
            with self.subTest(message), self.assertRaises(PluginError) as refused:
                read(Config(given, n=None))
            self.assertEqual(str(refused.exception), "invalid config: " + message)

    def test_an_empty_string_may_be_allowed(self) -> None:
        self.assertEqual(Config({"n": ""}, n="x").string("n", allow_empty=True), "")


class PluginConfigTest(unittest.TestCase):
    def test_a_plugin_without_parameters_refuses_any(self) -> None:
        self.assertIsInstance(create(Plugin, ""), Plugin)
        with self.assertRaisesRegex(PluginError, "unknown field limit"):
            create(Plugin, '{"limit": 1}')


if __name__ == "__main__":
    unittest.main()
