"""What the command modules share (click options, reading a device profile), so that each command
module imports this and :mod:`edge_asd.cli` registers them all, without an import circle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["false_alarm_rate_options", "load_config_or_default"]


def load_config_or_default(path: Path | None) -> Any:
    """The device profile at ``path`` (validated), or the built-in defaults when ``None``."""
    from edge_asd.config import Config, load_config

    return load_config(path) if path is not None else Config()


def false_alarm_rate_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--false-alarms-per-week`` / ``--false-alarms-per-day``: the device's false-alarm target,
    both alarm rules together; at most one of them (neither: one a week). The command receives
    ``false_alarms_per_week`` and ``false_alarms_per_day`` (``None`` when not given) and resolves
    them with :func:`edge_asd.decision.calibration.resolve_rate`."""
    f = click.option("--false-alarms-per-day", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="The same target per day (instead of --false-alarms-per-week).")(f)
    return click.option("--false-alarms-per-week", type=click.FloatRange(min=0, min_open=True), default=None,
                        help="False alarms the device may raise on normal sound, per week, the threshold and the "
                             "evidence rule together (half each). Default: 1.")(f)
