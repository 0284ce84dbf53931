"""How a client reaches a server that has TLS (mutual or not) or restricted API categories: the CA
that signed the server's certificate, the client's own certificate and key (mutual TLS), and headers
(gRPC: metadata) to send with every request. One value shared by the test harness, the benchmarks
and the load tests, with the same command-line options everywhere (``add_arguments`` / ``from_args``):

    --ca-cert ca.crt [--client-cert client.crt --client-key client.key] [--header x-api-key=secret ...]

(Not ``--tls-cert`` / ``--tls-key``: Locust has those, for its own web UI.)
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Access:
    ca: Path | None = None  # verify the server against this CA (TLS); None: plain text
    cert: Path | None = None  # the client's certificate and key (mutual TLS)
    key: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that verifies the server (and presents the client certificate), or None."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def grpc_credentials(self):
        """``grpc.ssl_channel_credentials`` for ``grpc.secure_channel``, or None (plain text)."""
        import grpc

        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(Path(self.ca).read_bytes(),
                                            Path(self.key).read_bytes() if self.cert else None,
                                            Path(self.cert).read_bytes() if self.cert else None)

    def grpc_channel(self, target: str, options=None, aio: bool = False):
        """A gRPC channel to ``target`` (secure with TLS), blocking or ``grpc.aio``."""
        import grpc

        module = grpc.aio if aio else grpc
        credentials = self.grpc_credentials()
        if credentials is None:
            return module.insecure_channel(target, options=options)
        return module.secure_channel(target, credentials, options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers as gRPC metadata (lower-case keys)."""
        return tuple((k.lower(), v) for k, v in self.headers.items())

    def tritonclient_http(self) -> dict:
        """``tritonclient.http.InferenceServerClient`` keyword arguments (its ``url`` has no scheme)."""
        if not self.tls:
            return {}
        options = {"ca_certs": str(self.ca)}
        if self.cert:
            options.update(certfile=str(self.cert), keyfile=str(self.key))
        return {"ssl": True, "ssl_options": options}

    def tritonclient_grpc(self) -> dict:
        """``tritonclient.grpc.InferenceServerClient`` keyword arguments."""
        if not self.tls:
            return {}
        return {"ssl": True, "root_certificates": str(self.ca), "private_key": str(self.key) if self.key else None,
                "certificate_chain": str(self.cert) if self.cert else None}


def add_arguments(parser) -> None:
    """The client options of the benchmarks and load tests."""
    parser.add_argument("--ca-cert", help="CA certificate (PEM) that signed the server's: speak TLS to both ports")
    parser.add_argument("--client-cert", help="client certificate (PEM) for mutual TLS (with --client-key)")
    parser.add_argument("--client-key", help="the client certificate's key (PEM)")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="a header (gRPC: metadata) sent with every request, e.g. the key of a restricted "
                        "API category; repeatable")


def from_args(args) -> Access:
    headers = {}
    for item in args.header or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--header {item!r}: expected KEY=VALUE")
        headers[key.strip()] = value
    if bool(args.client_cert) != bool(args.client_key):
        raise SystemExit("--client-cert and --client-key go together (mutual TLS)")
    if args.client_cert and not args.ca_cert:
        raise SystemExit("--client-cert needs --ca-cert (the CA of the server's certificate)")
    return Access(Path(args.ca_cert) if args.ca_cert else None, Path(args.client_cert) if args.client_cert else None,
                  Path(args.client_key) if args.client_key else None, headers)


def to_args(access: Access) -> list[str]:
    """The command-line options that ``from_args`` reads back into ``access``."""
    out = []
    if access.ca:
        out += ["--ca-cert", str(access.ca)]
    if access.cert:
        out += ["--client-cert", str(access.cert), "--client-key", str(access.key)]
    for key, value in access.headers.items():
        out += ["--header", f"{key}={value}"]
    return out


PLAIN = Access()

__all__ = ["Access", "PLAIN", "add_arguments", "from_args", "to_args"]
