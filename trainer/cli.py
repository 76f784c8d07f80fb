"""``asd-train``: the desktop trainer's command line.

Each sub-command lives beside the code it drives and is imported only when used, so
``asd-train --help`` does not load TensorFlow.
"""

from __future__ import annotations

import click

from edge_asd import __version__
from edge_asd.cli import run_cli

_COMMANDS = {
    # name: (module, attribute, short help)
    "synth": ("trainer.synth_cli", "synth", "Generate a synthetic MIMII-like data set."),
    "inspect": ("trainer.datasets_cli", "inspect", "List a data set's clips by layout, machine, ID and split."),
    "fit": ("trainer.fit_cli", "fit", "Train a model on normal sound, export a bundle, evaluate it."),
    "evaluate": ("trainer.fit_cli", "evaluate", "Score a data set with a bundle's float and int8 models."),
    "recipes": ("trainer.fit_cli", "recipes", "List the training recipes: what each sets, where it was measured."),
    "ensemble": ("trainer.ensemble", "ensemble", "Combine bundles into one that scores every window with all their models."),
    "demo": ("trainer.demo", "demo", "The end-to-end demo on built-in synthetic data."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr, short = _COMMANDS[name]
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {"tensorflow", "sklearn", "matplotlib", "keras"}:
                return _missing_extra(name, short, exc.name)
            raise
        return getattr(mod, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import the commands: some of them load TensorFlow (seconds).
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in _COMMANDS.items()])


def _missing_extra(name: str, short: str, missing: str) -> click.Command:
    @click.command(name, help=short, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{missing}' is not installed; install the trainer: pip install 'edge-asd[train]'")

    return cmd


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="asd-train")
def cli() -> None:
    """Train anomalous-sound detectors on normal machine sound and export int8 model bundles."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``asd-train``."""
    run_cli(cli, "asd-train", argv)


if __name__ == "__main__":
    main()
