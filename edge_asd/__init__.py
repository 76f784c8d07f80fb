"""edge-asd: detect failing machines by their sound, on a small computer next to the machine.

The package follows the data, one sub-package a stage: ``audio`` (capture and files) ->
``frontend`` (features) -> ``scoring`` (bundle, model, back ends, window scores) -> ``decision``
(period scores, alarm rules, sensor and machine states, calibration and enrollment) -> ``events``
(stdout, the store, MQTT, status) -> ``service``, ``remote`` and ``config`` -> ``cli``. See
docs/architecture.md.

Modules of the earlier flat layout (``edge_asd.alarm``, ``edge_asd.sinks``, ...) still import:
they are the same module objects as their new homes.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_MOVED = {
    "bundle": "scoring.bundle", "backends": "scoring.backends", "runtime": "scoring.runtime",
    "detector": "scoring.detector", "streaming": "scoring.streaming",
    "evidence": "decision.evidence", "alarm": "decision.alarm", "signal_quality": "decision.signal_quality",
    "machine_state": "decision.machine_state", "calibration": "decision.calibration", "enrollment": "decision.enrollment",
    "mqtt_discovery": "events.discovery", "health": "events.health", "sinks": "events",
    "recorder": "audio.recorder",
    "cli_options": "cli.options", "enroll_cli": "cli.enroll", "record_cli": "cli.record", "signing_cli": "cli.signing",
}
"""Old module name (below ``edge_asd``) -> its home now."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``edge_asd.<old name>`` as the module at its new home (the same object, so its
    attributes, monkeypatching and ``isinstance`` all agree)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(__name__) + 1:] if fullname.startswith(__name__ + ".") else None
        if old not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{_MOVED[spec.name[len(__name__) + 1:]]}")
        spec.loader_state = module.__spec__  # the import system is about to put the alias's spec on it
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.insert(0, _MovedModules())
