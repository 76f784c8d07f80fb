"""``edge-asd keygen``, ``sign`` and ``sign-bundle``: the operator's side of signed remote commands
and signed bundles (:mod:`edge_asd.signing`). Run them on the operator's machine, where the
private key lives; only the public key goes to the devices."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["keygen", "sign", "sign_bundle_command"]


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="command_key", show_default=True, help="File name of the key pair (NAME and NAME.pub).")
def keygen(out_dir: Path, name: str) -> None:
    """Make an Ed25519 key pair in OUT_DIR: NAME (private, mode 600: keep it on the operator's
    machine) and NAME.pub (public: install it on each device as mqtt.command_key_file, owned by root)."""
    from edge_asd.signing import generate_keypair

    private, public = generate_keypair(out_dir, name=name)
    click.echo(f"private key {private} (keep it secret: whoever has it commands the devices)")
    click.echo(f"public key  {public} (copy to each device: sudo install -o root -m 644 {public.name} /etc/edge-asd/)")


@click.command()
@click.argument("command_json")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The private key.")
@click.option("--device", required=True, help="The device id the command is for (the device refuses it otherwise).")
def sign(command_json: str, key_path: Path, device: str) -> None:
    """Sign COMMAND_JSON (e.g. '{"id": "op-18", "command": "calibrate", "seconds": 600}') for DEVICE
    and print the message to publish on its command topic; valid for 5 minutes, once.

        mosquitto_pub -t edge-asd/pump07/command -m "$(edge-asd sign --key k --device pump07 '{...}')"
    """
    from edge_asd.remote import CommandError, parse_command
    from edge_asd.signing import load_private_key, sign_command

    try:
        command = json.loads(command_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="COMMAND_JSON") from exc
    try:
        parse_command(command)  # refuse here what the device would refuse
    except CommandError as exc:
        raise click.BadParameter(str(exc), param_hint="COMMAND_JSON") from exc
    click.echo(sign_command(load_private_key(key_path), command, device=device))


@click.command("sign-bundle")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The private key.")
@click.option("--version", "version", type=click.IntRange(min=1), required=True,
              help="Release number: a device installs only versions above the one it runs.")
def sign_bundle_command(bundle: Path, key_path: Path, version: int) -> None:
    """Sign BUNDLE (writes BUNDLE/bundle.sig over its bundle.json, which holds every file's sha256)
    so that a device's remote reload accepts it from its mqtt.incoming_dir."""
    from edge_asd.scoring.bundle import read_bundle
    from edge_asd.signing import load_private_key, sign_bundle

    read_bundle(bundle)  # a bundle whose files do not match bundle.json is not worth signing
    out = sign_bundle(load_private_key(key_path), bundle, version=version)
    click.echo(f"signed {bundle} as version {version}: {out}")
