"""TLS on both ports from ``server.tls_cert`` / ``tls_key`` / ``tls_client_ca`` (PEM files).

- ``check``: the start-up check (the preflight): every file readable, the key unencrypted and matching
  the certificate, the client CA a certificate; raises ``TLSFileError`` with the one line to show.
- ``bentoml_ssl``: BentoML's ``ssl`` service configuration for the HTTP port (uvicorn in each worker
  loads it once, when the worker starts: a rotated certificate reaches HTTP only with new workers).
- ``grpc_credentials``: the gRPC port's credentials, grpc's dynamic server credentials: before each new
  connection's handshake grpc asks ``ReloadingFiles`` for a new configuration, which looks at the files'
  modification times (one ``stat`` each) and, when they changed and the new pair is valid, loads it.
  Connections already open keep the certificate they were made with.

Mutual TLS (``tls_client_ca``): both ports require a client certificate signed by that CA."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc

log = logging.getLogger("rnnserve.tls")

VARIABLES = {"cert": "RNNSERVE_SERVER__TLS_CERT", "key": "RNNSERVE_SERVER__TLS_KEY",
             "client_ca": "RNNSERVE_SERVER__TLS_CLIENT_CA"}


class TLSFileError(ValueError):
    """A TLS file the server cannot use; the message is the one line ``<cause>: <fix>``."""


def _no_password() -> bytes:
    raise TLSFileError("encrypted key")


def _readable(which: str, path: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TLSFileError(f"cannot read {VARIABLES[which]}={path}: {exc.strerror or exc}: mount the file "
                           "(in Kubernetes the TLS Secret) or fix the path") from exc


def check_pair(cert: str, key: str) -> None:
    """Raises TLSFileError unless ``cert`` and ``key`` are a PEM certificate and its unencrypted key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TLSFileError as exc:
        raise TLSFileError(f"{VARIABLES['key']}={key} is encrypted: give the server an unencrypted key "
                           "(a Kubernetes TLS Secret's tls.key is)") from exc
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSFileError(f"{VARIABLES['key']}={key} is not the key of the certificate {VARIABLES['cert']}="
                               f"{cert}: give the key the certificate was issued for") from exc
        raise TLSFileError(f"{VARIABLES['cert']}={cert} and {VARIABLES['key']}={key} are not a PEM certificate and "
                           f"its key ({reason}): give PEM files (-----BEGIN CERTIFICATE----- / "
                           "-----BEGIN PRIVATE KEY-----)") from exc


def check_client_ca(path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSFileError(f"{VARIABLES['client_ca']}={path} holds no PEM CA certificate ({exc.reason or exc}): "
                           "give the CA that signs the clients' certificates") from exc


def check(server) -> None:
    """The start-up check of ``server`` (ServerSettings); nothing to do without TLS."""
    if not server.tls_cert:
        return
    for which in ("cert", "key", "client_ca"):
        path = getattr(server, f"tls_{which}")
        if path:
            _readable(which, path)
    check_pair(server.tls_cert, server.tls_key)
    if server.tls_client_ca:
        check_client_ca(server.tls_client_ca)


def bentoml_ssl(server) -> dict | None:
    """BentoML's ``ssl`` service configuration (uvicorn's ``--ssl-*``), or None without TLS."""
    if not server.tls_cert:
        return None
    out = {"enabled": True, "certfile": server.tls_cert, "keyfile": server.tls_key}
    if server.tls_client_ca:
        out.update(ca_certs=server.tls_client_ca, cert_reqs=int(ssl.CERT_REQUIRED))
    return out


class ReloadingFiles:
    """The gRPC port's certificate configuration, loaded again when the files change (grpc calls
    ``fetch`` before each new connection's handshake: None keeps the current configuration)."""

    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.paths = [p for p in (cert, key, client_ca) if p]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.stamp = self._stamp()
        self.failed_stamp = None

    def _stamp(self) -> tuple:
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)  # follows links: a Kubernetes Secret volume swaps a link on update
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def configuration(self):
        roots = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())], root_certificates=roots)

    def fetch(self):
        stamp = self._stamp()
        if stamp == self.stamp or stamp == self.failed_stamp:
            return None
        try:  # a Secret update can be seen half-done (new certificate, old key): keep the old pair then
            check_pair(self.cert, self.key)
            if self.client_ca:
                check_client_ca(self.client_ca)
            config = self.configuration()
        except (OSError, TLSFileError) as exc:
            self.failed_stamp = stamp
            log.warning("TLS files changed but cannot be used (%s); gRPC keeps the previous certificate", exc)
            return None
        self.stamp, self.failed_stamp = stamp, None
        log.info("TLS files changed: new gRPC connections get the new certificate")
        return config


def grpc_credentials(server) -> grpc.ServerCredentials | None:
    """The gRPC port's server credentials (reloading on file change), or None without TLS."""
    if not server.tls_cert:
        return None
    files = ReloadingFiles(server.tls_cert, server.tls_key, server.tls_client_ca)
    return grpc.dynamic_ssl_server_credentials(files.configuration(), files.fetch,
                                               require_client_authentication=bool(server.tls_client_ca))


__all__ = ["ReloadingFiles", "TLSFileError", "bentoml_ssl", "check", "check_pair", "grpc_credentials"]
