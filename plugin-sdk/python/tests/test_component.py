"""The component glue, against the bindings componentize-py generates for wit/plugin.wit, with the
hub's imports faked: what the hub receives from each export, and that no exception escapes."""

import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

from hub_plugin import Context, Description, Event, Level, Plugin, Timer, export
from hub_plugin.types import decode, encode

WIT = Path(__file__).resolve().parents[3] / "wit" / "plugin.wit"
COMPONENTIZE_PY = shutil.which("componentize-py")
GENERATED = ("wit_world", "componentize_py_types", "componentize_py_async_support", "poll_loop")


class Probe(Plugin):
    @classmethod
    def describe(cls) -> Description:
        return Description("probe", "1.2.3", subscribes=["probe.*"], emits=["probe.seen"])

    def on_event(self, cx: Context, event: Event) -> None:
        if event.kind == "probe.fail":
            raise ValueError("boom")
        if event.kind == "probe.exit":
            sys.exit(3)
        cx.state.set("seen", cx.state.get("seen", 0) + 1)
        cx.timers.set_after("again", "1m", {"n": 1})
        cx.log(Level.WARN, "seen")
        cx.emit("probe.seen", {"name": cx.profile()["name"]})
        cx.act("offer.x", "offer", 5, None, "dedup")
        cx.deliver("push", "device-1", "hi")

    def on_timer(self, cx: Context, timer: Timer) -> None:
        cx.emit("probe.seen", {"timer": timer.id, "n": timer.payload["n"]}, actor="other")


class FakeHub:
    """The hub's side of the imports, in memory."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.timers: dict[str, tuple[int, bytes]] = {}
        self.logs: list[tuple[Any, str]] = []

    def set_timer(self, id: str, due: int, payload: bytes) -> None:
        self.timers[id] = (due, payload)


@unittest.skipUnless(COMPONENTIZE_PY, "componentize-py is not installed (pip install -r requirements.txt)")
class ComponentTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.bindings = tempfile.TemporaryDirectory()
        subprocess.run(
            [COMPONENTIZE_PY, "-d", str(WIT), "-w", "plugin", "bindings", cls.bindings.name],
            check=True,
            capture_output=True,
        )
        sys.path.insert(0, cls.bindings.name)
        from wit_world.imports import types as wit

        cls.wit = wit

    @classmethod
    def tearDownClass(cls) -> None:
        sys.path.remove(cls.bindings.name)
        for module in list(sys.modules):
            if module.split(".")[0] in GENERATED or module == "hub_plugin.component":
                del sys.modules[module]
        cls.bindings.cleanup()

    def setUp(self) -> None:
        from wit_world.imports import clock, log, profile, state, timers

        self.hub = FakeHub()
        clock.now = lambda: 1_000
        state.get, state.set = self.hub.state.get, self.hub.state.__setitem__
        state.delete = lambda key: self.hub.state.pop(key, None)
        timers.set = self.hub.set_timer
        timers.cancel = lambda id: self.hub.timers.pop(id, None)
        profile.get = lambda: encode({"name": "Ada"})
        log.log = lambda level, message: self.hub.logs.append((level, message))
        self.world = export(Probe)()

    def event(self, kind: str) -> Any:
        return self.wit.Event("e1", kind, "c1", 900, "events.probe", encode({}))

    def test_the_class_is_a_wit_world_that_describes_the_plugin(self) -> None:
        import wit_world

        self.assertIn(wit_world.WitWorld, type(self.world).__mro__)
        self.assertEqual(
            self.world.describe(), self.wit.Description("probe", "1.2.3", ["probe.*"], ["probe.seen"])
        )

    def test_outputs_and_host_calls_reach_the_hub_as_wit_values(self) -> None:
        from componentize_py_types import Err

        with self.assertRaises(Err) as early:
            self.world.on_event(self.event("probe.ok"))
        self.assertEqual(early.exception.value, "plugin called before init")
        self.world.init("")
        out = self.world.on_event(self.event("probe.ok"))
        wit = self.wit
        self.assertEqual(
            out,
            [
                wit.Output_Emit(wit.Emitted("probe.seen", None, encode({"name": "Ada"}))),
                wit.Output_Action(wit.Action("offer.x", "offer", 5, "dedup", encode({}))),
                wit.Output_Deliver(wit.Delivery("push", "device-1", b"hi")),
            ],
        )
        from wit_world.imports import log

        self.assertEqual(decode(self.hub.state["seen"]), 1)
        self.assertEqual(self.hub.timers, {"again": (61_000, encode({"n": 1}))})
        self.assertEqual(self.hub.logs, [(log.Level.WARN, "seen")])

    def test_a_timer_call_gets_its_payload(self) -> None:
        self.world.init("{}")
        out = self.world.on_timer(self.wit.Timer("again", "c1", 61_000, encode({"n": 1})))
        emitted = self.wit.Emitted("probe.seen", "other", encode({"timer": "again", "n": 1}))
        self.assertEqual(out, [self.wit.Output_Emit(emitted)])

    def test_every_exception_becomes_an_error_result_never_a_trap(self) -> None:
        from componentize_py_types import Err

        self.world.init("{}")
        with self.assertRaises(Err) as failed:
            self.world.on_event(self.event("probe.fail"))
        self.assertRegex(failed.exception.value, r"^ValueError: boom \(at test_component\.py:\d+ in on_event\)$")
        with self.assertRaises(Err) as exited:
            self.world.on_event(self.event("probe.exit"))
        self.assertRegex(exited.exception.value, r"^SystemExit: 3 ")
        with self.assertRaises(Err) as refused:
            self.world.init('{"limit": 3}')
        self.assertEqual(refused.exception.value, "invalid config: unknown field limit (known fields: none)")
        self.assertEqual(len(self.world.on_event(self.event("probe.ok"))), 3)  # the old config still serves


class ExportOutsideAComponentTest(unittest.TestCase):
    def test_without_bindings_export_returns_none_so_tests_can_import_the_app(self) -> None:
        self.assertNotIn("wit_world", sys.modules)
        self.assertIsNone(export(Probe))


if __name__ == "__main__":
    unittest.main()
