"""An authenticated mosquitto for tests: TLS (with client certificates), a password file and an ACL.

:func:`make_pki` writes a throw-away certificate authority, a server certificate for
``localhost`` / ``127.0.0.1``, a client certificate signed by the CA and a second, unrelated CA
(the "wrong CA" of the failure tests); EC P-256 keys, so the whole set takes milliseconds.

:class:`AuthBroker` is a :class:`tests.test_mqtt.Broker` with two loopback listeners:

- ``tls_port``: what the device uses. TLS with a client certificate required, no anonymous
  access, users from a ``mosquitto_passwd`` file, topics from an ACL file;
- ``port``: plain and anonymous, for the test's own subscribers (``Subscriber``, ``Collector``),
  which so need no credentials.

``set_acl`` rewrites the ACL and reloads it (SIGHUP) without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.test_mqtt import Broker, free_port

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or (
    "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None)


@dataclass(frozen=True)
class Pki:
    """PEM files written by :func:`make_pki`."""

    ca: Path
    """The CA that signed the server and client certificates."""
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it instead of :attr:`ca` fails verification."""


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server certificate (``localhost``, ``127.0.0.1``), a client certificate and
    an unrelated CA into ``folder``; valid from 5 minutes ago for one day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                             crl_sign=cert_sign, encipher_only=False, decipher_only=False)

    def builder(subject: x509.Name, issuer: x509.Name, key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))

    def ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(name(cn), name(cn), key)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(usage(cert_sign=True), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, ca_key, ca_cert, eku, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(name(cn), ca_cert.subject, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(usage(cert_sign=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    def write(stem: str, key, cert) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            key_path.chmod(0o600)
        return cert_path, key_path

    ca_key, ca_cert = ca("edge-asd test CA")
    server = leaf("localhost", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = leaf("edge-asd test device", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_cert = ca("some other CA")
    ca_path, _ = write("ca", None, ca_cert)
    server_cert, server_key = write("server", *server)
    client_cert, client_key = write("client", *client)
    other_ca, _ = write("other-ca", None, other_cert)
    return Pki(ca=ca_path, server_cert=server_cert, server_key=server_key, client_cert=client_cert,
               client_key=client_key, other_ca=other_ca)


class AuthBroker(Broker):
    """A mosquitto whose TLS listener demands a client certificate, a password and the ACL.

    ``users`` maps user names to passwords (written with ``mosquitto_passwd``); ``acl`` is the
    ACL file's text (mosquitto's ``user`` / ``topic read|write|readwrite`` lines).
    """

    def __init__(self, root: Path, *, pki: Pki, users: dict[str, str], acl: str) -> None:
        super().__init__(root)
        self.tls_port = free_port()
        self.passwd = root / "passwd"
        self.passwd.write_text("")
        for user, password in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.passwd), user, password], check=True,
                           capture_output=True)
        self.acl = root / "acl"
        self.acl.write_text(acl)
        # Per-listener settings: the device's TLS listener authenticates and applies the ACL, the
        # plain one lets the test's subscribers in anonymously with full access.
        base = self.conf.read_text().replace(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n", "")
        self.conf.write_text(
            "per_listener_settings true\n" + base + "log_type all\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {self.passwd}\n"
            f"acl_file {self.acl}\ncafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        )

    def set_acl(self, acl: str) -> None:
        """Replace the ACL and make the running broker reload it."""
        self.acl.write_text(acl)
        before = self.log.read_text(errors="replace").count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.log.read_text(errors="replace").count("Reloading config") == before:
            assert time.monotonic() < deadline, "mosquitto did not reload its configuration"
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
