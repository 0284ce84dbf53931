"""An exec probe for Kubernetes under mutual TLS: the kubelet's HTTP probes present no client
certificate, so a server that requires one (``server.tls_client_ca``) refuses them. The mutual-TLS
component (k8s/components/mtls) runs this instead, inside the container:

    python -m rnnserve.service.probe --cert /etc/rnnserve/tls/tls.crt --key /etc/rnnserve/tls/tls.key /readyz

It asks ``https://127.0.0.1:<port><path>`` presenting ``--cert`` / ``--key`` (a certificate the client
CA signed, with the client-auth usage: by default the component gives the server's own), with
``--header KEY=VALUE`` (``KEY=@/path``: the value from a file) where the ``health`` category is
restricted, and exits 0 on 200, 1 otherwise with one line saying why. The server's certificate is not
verified: the probe talks to its own pod over loopback, as the kubelet's HTTPS probes do.

Standard library only, and no settings tree: it is a client with its own arguments, started every
few seconds (measured: 0.05 s of CPU each; importing the settings tree alone costs 0.17 s)."""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from pathlib import Path


def header_value(value: str) -> str:
    return Path(value[1:]).read_text().strip() if value.startswith("@") else value


def probe(path: str, port: int, cert: str | None, key: str | None, headers: dict[str, str],
          timeout: float) -> tuple[bool, str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # its own pod, over loopback (what the kubelet's HTTPS probes do)
    if cert:
        context.load_cert_chain(cert, key)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET https://127.0.0.1:{port}{path}: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return status == 200, f"GET https://127.0.0.1:{port}{path}: {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.service.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="/readyz or /livez")
    p.add_argument("--port", type=int, default=3000, help="the HTTP port (default 3000)")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="its key (PEM)")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE", help="KEY=VALUE or KEY=@/path")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    try:
        headers = {k: header_value(v) for k, _, v in (h.partition("=") for h in args.header)}
        ok, line = probe(args.path, args.port, args.cert, args.key, headers, args.timeout)
    except (OSError, ssl.SSLError) as exc:
        ok, line = False, f"probe: {exc}"
    if not ok:
        print(line, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
