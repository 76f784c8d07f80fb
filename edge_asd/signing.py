"""Signed remote commands and signed bundles: Ed25519 (the ``cryptography`` package), none of the
cryptography written here.

Whoever can publish to a device's command topic could otherwise change what it listens for. The
device trusts only what is signed with the operator's private key, checked against the public key
in a root-owned file (``mqtt.command_key_file``, e.g. ``/etc/edge-asd/command_key.pub``); the
private key stays on the operator's machine.

A signed command is a JSON object ``{"body": "<the command's JSON text>", "signature": "<base64>"}``.
The signature covers the body's exact bytes (no canonical form to get wrong). The body is the
command (``id``, ``command`` and its fields) plus ``device`` (the one device it is for),
``issued_unix`` (when it was signed, seconds since the epoch) and ``nonce`` (random): a device
refuses a command for another device, one issued more than :data:`MAX_COMMAND_AGE_S` ago or
ahead, and a nonce it has seen (a replay).

A signed bundle carries ``bundle.sig``: ``{"version": N, "bundle_json_sha256": "...",
"signature": "<base64>"}`` over ``edge-asd-bundle\\n<version>\\n<sha256 of bundle.json>``;
``bundle.json`` in turn holds the sha256 of every model and back end file. ``version`` is the
operator's release number: a device never installs a version at or below one it has run (no
rollback to an old, legitimately signed bundle).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Mapping

from edge_asd.errors import ConfigError, EdgeASDError

__all__ = ["SignatureError", "generate_keypair", "load_public_key", "load_private_key", "sign_command", "verify_command",
           "sign_bundle", "verify_bundle_signature", "MAX_COMMAND_AGE_S", "BUNDLE_SIGNATURE_FILE", "check_key_file"]

MAX_COMMAND_AGE_S = 300.0
"""A command signed longer ago than this (or this far in the future: a wrong clock) is refused, seconds."""
BUNDLE_SIGNATURE_FILE = "bundle.sig"
_SIGNATURE_FIELDS = ("device", "issued_unix", "nonce")


class SignatureError(EdgeASDError):
    """A signature is missing, malformed or does not verify; or a signed message is stale or replayed."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - the device extra installs it
        raise ConfigError("signed commands need the cryptography package: pip install 'edge-asd[device]'") from exc
    return serialization, ed25519


def generate_keypair(out_dir: str | os.PathLike, *, name: str = "command_key") -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as ``out_dir/<name>`` (private, PEM, mode 600) and
    ``out_dir/<name>.pub`` (public, PEM); return both paths. Refuses to overwrite."""
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / name, out / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; move it away or choose another folder (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def check_key_file(path: Path, *, what: str) -> None:
    """A key the device trusts must be owned by root (or by the user running this, for tests and
    desktops) and writable by its owner only: anyone who can replace it can command the device."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc}); install the operator's public key "
                          "there (edge-asd keygen makes a pair)") from exc
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{what} {path} is owned by uid {st.st_uid}: it must belong to root "
                          f"(sudo chown root:root {path})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{what} {path} is writable by group or others: sudo chmod 644 {path}")


def load_public_key(path: str | os.PathLike, *, what: str = "mqtt.command_key_file") -> Any:
    """The Ed25519 public key in ``path`` (PEM), after :func:`check_key_file`."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    check_key_file(path, what=what)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what} {path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{what} {path}: not an Ed25519 key (edge-asd keygen makes one)")
    return key


def load_private_key(path: str | os.PathLike) -> Any:
    """The operator's Ed25519 private key (PEM, from :func:`generate_keypair`)."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key (edge-asd keygen makes one)")
    return key


def sign_command(private_key: Any, command: Mapping[str, Any], *, device: str, now: float | None = None) -> str:
    """The signed message (JSON text) of ``command`` for ``device``."""
    clash = sorted(set(command) & set(_SIGNATURE_FIELDS))
    if clash:
        raise ConfigError(f"the command must not set {clash}: signing adds them")
    body = json.dumps({**command, "device": device, "issued_unix": round(time.time() if now is None else now, 3),
                       "nonce": secrets.token_hex(16)}, sort_keys=True, separators=(",", ":"))
    signature = private_key.sign(body.encode("utf-8"))
    return json.dumps({"body": body, "signature": base64.b64encode(signature).decode("ascii")}, separators=(",", ":"))


def _decode_signature(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"{where}: \"signature\" must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise SignatureError(f"{where}: the signature is not base64") from exc
    if len(raw) != 64:
        raise SignatureError(f"{where}: an Ed25519 signature has 64 bytes, this one {len(raw)}")
    return raw


def verify_command(payload: bytes, public_key: Any, *, device: str, now: float | None = None,
                   max_age_s: float = MAX_COMMAND_AGE_S) -> tuple[dict[str, Any], str]:
    """Check a signed command message; return the command (without the signing fields) and its nonce.

    Raises :class:`SignatureError` for an unsigned, malformed, forged, foreign or stale message.
    Replays are the caller's to refuse (it keeps the nonces it has seen).
    """
    from cryptography.exceptions import InvalidSignature

    try:
        outer = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SignatureError("not a JSON object") from exc
    if not isinstance(outer, dict) or set(outer) != {"body", "signature"} or not isinstance(outer["body"], str):
        raise SignatureError('unsigned: a command must be {"body": "<command JSON>", "signature": "<base64>"} '
                             "(sign it with 'edge-asd sign')")
    signature = _decode_signature(outer["signature"], "command")
    try:
        public_key.verify(signature, outer["body"].encode("utf-8"))
    except InvalidSignature as exc:
        raise SignatureError("the signature does not verify with mqtt.command_key_file: not signed by the operator's key") from exc
    try:
        body = json.loads(outer["body"])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SignatureError("the signed body is not JSON") from exc
    if not isinstance(body, dict):
        raise SignatureError("the signed body is not a JSON object")
    if body.get("device") != device:
        raise SignatureError(f"signed for device {body.get('device')!r}, this is {device!r}")
    issued = body.get("issued_unix")
    if isinstance(issued, bool) or not isinstance(issued, (int, float)) or not math.isfinite(issued):
        raise SignatureError('the signed body has no "issued_unix" time')
    age = (time.time() if now is None else now) - float(issued)
    if abs(age) > max_age_s:
        raise SignatureError(f"signed {age:.0f} s {'ago' if age > 0 else 'ahead'}: commands are accepted within "
                             f"{max_age_s:g} s of signing (check both clocks)")
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise SignatureError('the signed body has no "nonce"')
    return {k: v for k, v in body.items() if k not in _SIGNATURE_FIELDS}, nonce


def _bundle_message(version: int, digest: str) -> bytes:
    return f"edge-asd-bundle\n{version}\n{digest}".encode("ascii")


def sign_bundle(private_key: Any, bundle_dir: str | os.PathLike, *, version: int) -> Path:
    """Write ``bundle.sig`` for the bundle in ``bundle_dir`` as release ``version`` (an integer >= 1)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"the bundle version must be an integer >= 1, got {version!r}")
    path = Path(bundle_dir)
    digest = hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest()
    signature = private_key.sign(_bundle_message(version, digest))
    out = path / BUNDLE_SIGNATURE_FILE
    out.write_text(json.dumps({"version": version, "bundle_json_sha256": digest,
                               "signature": base64.b64encode(signature).decode("ascii")}, indent=2) + "\n")
    return out


def verify_bundle_signature(bundle_dir: str | os.PathLike, public_key: Any) -> int:
    """Check ``bundle.sig`` against ``bundle.json`` and the key; return the signed version."""
    from cryptography.exceptions import InvalidSignature

    path = Path(bundle_dir)
    sig_path = path / BUNDLE_SIGNATURE_FILE
    try:
        raw = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SignatureError(f"{path}: unsigned bundle (no {BUNDLE_SIGNATURE_FILE}); sign it with 'edge-asd sign-bundle'") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{sig_path}: unreadable ({exc})") from exc
    if not isinstance(raw, dict) or set(raw) != {"version", "bundle_json_sha256", "signature"}:
        raise SignatureError(f"{sig_path}: expected version, bundle_json_sha256 and signature")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SignatureError(f"{sig_path}: version must be an integer >= 1")
    digest = hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest()
    if raw["bundle_json_sha256"] != digest:
        raise SignatureError(f"{path}: bundle.json was changed after it was signed")
    try:
        public_key.verify(_decode_signature(raw["signature"], str(sig_path)), _bundle_message(version, digest))
    except InvalidSignature as exc:
        raise SignatureError(f"{sig_path}: the signature does not verify with the operator's key") from exc
    return int(version)
