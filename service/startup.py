"""Start-up failures fail fast and say why in one line.

Two places can find that the server cannot serve:

- ``load_settings`` (every entry point: ``rnnserve serve`` and the service module that a plain
  ``bentoml serve`` imports) refuses an environment with an ``RNNSERVE_*`` variable that is not a
  setting, then validates the tree.
- ``preflight`` runs in the server process before BentoML starts anything: the settings are valid,
  the TLS files usable, the restricted-API values readable, both ports are free, the model is in the
  store and every file matches its sha256, and CUDA is there when it was asked for. These are the
  common mistakes (a typo in the model name, a second server on the port), found in well under a
  second with nothing bound.
- ``abort`` runs in a worker whose start-up fails anyway (ONNX Runtime cannot load the graph, the
  golden self-test fails, a port taken in the meantime): it logs the one line, hands it to the server
  process through the report file named by ``REPORT_ENV``, stops the BentoML arbiter (the worker's
  parent) and exits. BentoML would otherwise restart the worker forever with its port open.

``describe`` turns any start-up exception into that line: the cause and the fix, no traceback (the
traceback is logged at debug level)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from rnnserve.bundle import manifest as bundles

from . import tls
from .security import Restrictions
from .settings import SECRET_SETTINGS, Settings, unknown_variables

log = logging.getLogger("rnnserve.startup")

REPORT_ENV = "_RNNSERVE_STARTUP_REPORT"  # not an RNNSERVE_* setting: internal to one server's processes


class StartupError(RuntimeError):
    """The server cannot start; the message is the one line to show."""


def settings_error(exc: ValidationError, prefix: str = "RNNSERVE_") -> str:
    """One line naming each bad variable and what it accepts."""
    parts = []
    for err in exc.errors():
        var = prefix + "__".join(str(p) for p in err["loc"]).upper()
        value = err.get("input")
        secret = tuple(str(p) for p in err["loc"][:2]) in SECRET_SETTINGS
        shown = f"={value!r}" if isinstance(value, str | int | float) and not secret else ""
        parts.append(f"{var}{shown}: {err['msg']}")
    return "invalid setting " + "; ".join(parts)


def check_environment(environ: Mapping[str, str]) -> None:
    """Raises StartupError naming every ``RNNSERVE_*`` variable of ``environ`` that is not a setting."""
    unknown = unknown_variables(environ)
    if unknown:
        names = "; ".join(f"{name} ({hint})" for name, hint in unknown)
        raise StartupError(f"unknown setting {names}: rename or unset it; every RNNSERVE_* variable must be a "
                           "setting (docs/OPERATIONS.md, \"Settings\")")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings tree of this process's environment, after ``check_environment``."""
    check_environment(os.environ if environ is None else environ)
    try:
        return Settings()
    except ValidationError as exc:
        raise StartupError(settings_error(exc)) from exc


def load_restrictions(settings: Settings) -> Restrictions:
    """The restricted API categories, their values read (``@/path``); raises StartupError."""
    try:
        return Restrictions.parse(settings.server.restricted_api)
    except (OSError, ValueError) as exc:
        raise StartupError(f"invalid setting RNNSERVE_SERVER__RESTRICTED_API: {exc}: fix the value or the file "
                           "(docs/OPERATIONS.md, \"Security\")") from exc


def service_settings() -> tuple[Settings, Restrictions]:
    """For the service module, at import (a plain ``bentoml serve`` starts there): the settings and the
    restrictions, or the one line on stderr and exit status 2."""
    try:
        settings = load_settings()
        return settings, load_restrictions(settings)
    except StartupError as exc:
        print(f"[rnnserve] error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def check_tls(settings: Settings) -> None:
    try:
        tls.check(settings.server)
    except tls.TLSFileError as exc:
        raise StartupError(str(exc)) from exc


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound exclusively (no SO_REUSEPORT: a server that holds the port
    with SO_REUSEPORT, as gRPC servers do, must still count as using it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(settings: Settings) -> None:
    server = settings.server
    for name, port, var, flag in (("HTTP", server.http_port, "RNNSERVE_SERVER__HTTP_PORT", "--port"),
                                  ("gRPC", server.grpc_port, "RNNSERVE_SERVER__GRPC_PORT", "--grpc-port")):
        if port and not _port_free(server.host, port):
            raise StartupError(f"{name} port {port} on {server.host} is already in use: stop the other server "
                               f"or choose another port ({var} / rnnserve serve {flag})")


def check_provider(settings: Settings) -> None:
    if settings.runtime.provider != "cuda":
        return
    import onnxruntime as ort

    from .runtime.onnx import select_providers

    try:
        select_providers(ort.get_available_providers(), "cuda")
    except RuntimeError as exc:
        raise StartupError(f"{exc}; or set RNNSERVE_RUNTIME__PROVIDER=auto to fall back to CPU") from exc


def preflight(settings: Settings) -> list[bundles.Bundle]:
    """Everything that can be checked before BentoML starts; raises StartupError."""
    from .settings import model_list

    check_tls(settings)
    load_restrictions(settings)
    check_ports(settings)
    check_provider(settings)
    try:
        entries = model_list(settings)
    except (OSError, ValueError) as exc:
        raise StartupError(f"invalid setting RNNSERVE_MODELS={settings.models!r}: {exc}") from exc
    out = []
    for name, version in entries:
        tag = f"{name}:{version}"
        try:
            out.append(bundles.load(tag))
        except bundles.BundleError as exc:
            raise StartupError(describe(exc, tag)) from exc
    return out


def describe(exc: BaseException, tag: str = "<model>") -> str:
    """The one line for a start-up exception: what failed and what to do."""
    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return settings_error(exc)
    if isinstance(exc, bundles.BundleError):
        text = str(exc)
        if "self-test failed" in text:
            return f"{tag}: {text}: the bundle does not reproduce its recorded outputs on this runtime; re-export it"
        if "not in the BentoML model store" in text:
            return text
        name = tag.split(":")[0]
        return f"{tag}: {text}: re-export the model (`rnnserve export --name {name}`)"
    module = type(exc).__module__ or ""
    if module.startswith("onnxruntime"):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{tag}: ONNX Runtime cannot load the model graph: {first}; re-export the model"
    if isinstance(exc, OSError) and "address already in use" in str(exc).lower():
        return f"a port is already in use ({exc}): stop the other server or choose another port"
    return f"start-up failed: {type(exc).__name__}: {exc}"


def abort(exc: BaseException, tag: str = "<model>") -> None:
    """In a BentoML worker: report ``exc`` in one line, stop the whole server, exit. Never returns."""
    line = describe(exc, tag)
    log.error("%s", line)
    log.debug("start-up failure", exc_info=exc)
    report = os.environ.get(REPORT_ENV)
    if report:
        with Path(report).open("a") as fh:
            fh.write(line + "\n")
    try:
        os.kill(os.getppid(), signal.SIGTERM)  # the arbiter: stop instead of restarting us forever
    finally:
        logging.shutdown()
        os._exit(3)
