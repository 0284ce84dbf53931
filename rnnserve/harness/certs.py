"""Throwaway certificates for the TLS tests and benchmarks: one CA, a server certificate for the
loopback names it signs, and client certificates, written as PEM files into a directory.

Uses ``cryptography`` (the ``dev`` extra); nothing here is fit for production keys: short-lived,
unencrypted, written to a temporary directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    """A CA, the server's certificate (for ``localhost`` and ``127.0.0.1``) and a client certificate,
    all signed by the CA (which is also the client CA of a mutual-TLS server)."""

    ca: Path
    server: Pair
    client: Pair
    directory: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _builder(subject: str, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


class Authority:
    """A self-signed CA that signs leaf certificates into ``directory``."""

    def __init__(self, directory: Path, name: str = "rnnserve test CA", days: int = 2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.days = days
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        self.cert = (_builder(name, self.name, self.key.public_key(), days)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = self.directory / f"{name.replace(' ', '-')}.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, names: tuple[str, ...] = LOOPBACK_NAMES, server: bool = True,
              client: bool = False) -> Pair:
        """A leaf certificate for ``names`` (DNS names or IP addresses) with the usages asked for."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt = [x509.IPAddress(ipaddress.ip_address(n)) if n.replace(".", "").isdigit() else x509.DNSName(n)
               for n in names]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        cert = (_builder(names[0] if names else stem, self.name, key.public_key(), self.days)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .sign(self.key, hashes.SHA256()))
        pair = Pair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair


def make_certs(directory: Path) -> Certs:
    """A fresh CA with a server certificate for the loopback names and a client certificate."""
    ca = Authority(directory)
    return Certs(ca=ca.path, server=ca.issue("server"),
                 client=ca.issue("client", names=("rnnserve-test-client",), server=False, client=True),
                 directory=Path(directory))


__all__ = ["Authority", "Certs", "Pair", "make_certs"]
