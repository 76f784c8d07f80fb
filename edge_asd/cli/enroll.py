"""``edge-asd enroll``: fit a bundle to the site it listens at, or roll it back to the factory values.

calibrate re-sets the threshold; enroll re-fits normalisation + score scaling + threshold;
rollback returns to factory. The work is done by :mod:`edge_asd.decision.enrollment` (no TensorFlow).
"""

from __future__ import annotations

from pathlib import Path

import click

from edge_asd.cli.options import false_alarm_rate_options, load_config_or_default as _load_config

__all__ = ["enroll"]


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--input", "input_spec", help="Normal audio: mic, mic:N, mic:NAME, a wav file or a folder. "
              "Default: the config's input.")
@click.option("--seconds", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Audio to record or read, seconds (files: at most this much).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML: input channels and rate, alarm.period_s, device.model and class_label.")
@false_alarm_rate_options
@click.option("--period-s", type=click.FloatRange(min=0, min_open=True), help="Scoring period, seconds (default: the config's alarm.period_s).")
@click.option("--model", type=click.Choice(["int8", "float"]), default=None, help="Model the service runs (default: the config's device.model).")
@click.option("--class-label", help="Machine class (neg_log_prob bundles; default: the config's device.class_label).")
@click.option("--dry-run", is_flag=True, help="Print the result; do not write the bundle.")
@click.option("--rollback", is_flag=True, help="Restore the factory normalisation, score scaling and threshold exactly.")
@click.option("--selective", is_flag=True, help="Keep the factory values too: a window's score is the lower of its site "
              "and factory scores (sound like the training data or like the site is normal); the threshold is fitted on those.")
def enroll(bundle, input_spec, seconds, config_path, false_alarms_per_week, false_alarms_per_day, period_s, model, class_label, dry_run, rollback,
           selective) -> None:
    """Enroll BUNDLE on normal sound recorded where the device is mounted.

    Re-fits the feature normalisation (per-feature mean and std of the site's frames), the score
    scaling (mean and std of the site's window scores), the threshold and the evidence rule for
    the false-alarm rate (as calibrate: one a week by default). The factory values are kept:
    --rollback restores them exactly. calibrate re-sets the threshold only.

    The audio is refused when it is silent, has a flat-lined channel, is clipped, cannot match
    the bundle's features (a lower sample rate, another channel count than the profile) or is
    shorter than 10 periods.
    """
    from edge_asd.config import parse_input_spec
    from edge_asd.decision.enrollment import _summary, enroll_bundle, rollback_bundle

    if rollback:
        if input_spec or dry_run:
            raise click.UsageError("--rollback takes no --input or --dry-run")
        restored = rollback_bundle(bundle)
        click.echo(f"factory values restored in {Path(bundle) / 'bundle.json'}: {_summary(restored.enrollment.factory)}")
        return
    from edge_asd.decision.calibration import resolve_rate

    false_alarms_per_day = resolve_rate(per_day=false_alarms_per_day, per_week=false_alarms_per_week)
    config = _load_config(config_path)
    inp = parse_input_spec(input_spec, config.input) if input_spec else config.input
    period = period_s or config.alarm.period_s
    result = enroll_bundle(
        bundle, inp, seconds=seconds, period_s=period, false_alarms_per_day=false_alarms_per_day,
        model=model or config.device.model, class_label=class_label or config.device.class_label, dry_run=dry_run,
        selective=selective, log=lambda message: click.echo(message, err=True),
    )
    a = result.site.audio
    click.echo(f"{a['seconds']:.1f} s of audio, {result.n_periods} periods of {period:g} s; RMS {a['signal']['rms_dbfs']:.1f} dBFS, "
               f"{100 * a['signal']['clipped_fraction']:.2f} % clipped")
    click.echo(f"with the factory values {result.factory_exceedances} of {a['factory_on_site']['n_periods']} site periods "
               f"were above the threshold ({a['factory_on_site']['threshold']:.6g})")
    click.echo(f"site      {_summary(result.site.values)}")
    click.echo(result.rules.statement())
    if dry_run:
        click.echo("dry run: bundle not changed")
        return
    click.echo(f"site values written to {Path(bundle) / 'bundle.json'} (factory values kept: 'edge-asd enroll {bundle} --rollback')")
