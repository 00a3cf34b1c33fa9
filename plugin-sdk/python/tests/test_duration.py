import unittest

from hub_plugin import DAY, HOUR, MINUTE, SECOND, millis


class DurationTest(unittest.TestCase):
    def test_texts_read_as_the_rust_sdk_reads_them(self) -> None:
        cases = {
            "0": 0,
            "500ms": 500,
            "30s": 30 * SECOND,
            "90 s": 90 * SECOND,
            "10m": 10 * MINUTE,
            "10 minutes": 10 * MINUTE,
            "1h": HOUR,
            "2h 30m": 2 * HOUR + 30 * MINUTE,
            "2h30m": 2 * HOUR + 30 * MINUTE,
            "1.5h": 90 * MINUTE,
            "0.25s": 250,
            "1d": DAY,
            "2w": 14 * DAY,
            "1M": 2_630_016 * SECOND,
            "1y": 31_557_600 * SECOND,
            "1500us": 1,
            "1500\u00b5s": 1,
            "999999ns": 0,
            " 3m ": 3 * MINUTE,
        }
        for text, ms in cases.items():
            with self.subTest(text):
                self.assertEqual(millis(text), ms)

    def test_a_number_is_milliseconds(self) -> None:
        self.assertEqual(millis(0), 0)
        self.assertEqual(millis(1500), 1500)

    def test_malformed_durations_are_refused_with_the_reason(self) -> None:
        cases = {
            "": "empty",
            "10": "a time unit is needed",
            "ten minutes": "a number is expected",
            "-5m": "a number is expected",
            "5x": 'unknown time unit "x"',
            "5 Min": 'unknown time unit "Min"',
            "1.h": "a time unit is needed",
            "99999999999999999y": "too large",
        }
        for text, reason in cases.items():
            with self.subTest(text), self.assertRaises(ValueError) as refused:
                millis(text)
            self.assertIn(reason, str(refused.exception))

    def test_only_non_negative_integers_and_texts_are_durations(self) -> None:
        for value in (-1, True, 1.5, None, ["1s"]):
            with self.subTest(value), self.assertRaises(ValueError):
                millis(value)


if __name__ == "__main__":
    unittest.main()
