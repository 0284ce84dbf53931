"""``rnnserve serve``: validate the settings, then run the server process (``rnnserve.service.entry``).

Command-line flags are shorthands for ``RNNSERVE_*`` variables: they are validated together with the
environment here and handed to the server process in its environment, its one settings source."""

from __future__ import annotations

import os
import sys

FLAGS = {  # flag -> (settings section, field)
    "model": ("model", "name"),
    "host": ("server", "host"),
    "port": ("server", "http_port"),
    "grpc_port": ("server", "grpc_port"),
    "workers": ("server", "workers"),
}


def server_environment(args, environ: dict[str, str]) -> tuple[dict[str, str], object]:
    """The server's environment (flags applied as RNNSERVE_* variables) and its validated settings.
    An RNNSERVE_* variable that is not a setting stops here (StartupError: one line, exit status 2)."""
    from rnnserve.service.settings import Settings
    from rnnserve.service.startup import check_environment

    check_environment(environ)
    overrides: dict[str, dict] = {}
    env = dict(environ)
    for flag, (section, field) in FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.setdefault(section, {})[field] = value
            env[f"RNNSERVE_{section}__{field}".upper()] = str(value)
    return env, Settings(**overrides)  # env + flags, validated before anything starts


def cmd_serve(args) -> int:
    env, _ = server_environment(args, dict(os.environ))
    cmd = [sys.executable, "-m", "rnnserve.service.entry"]
    os.execvpe(cmd[0], cmd, env)
    return 1  # pragma: no cover


def register(sub) -> None:
    sp = sub.add_parser("serve", help="serve HTTP (:3000) and gRPC (:8001) through BentoML")
    sp.add_argument("--model", help="model name in the store (RNNSERVE_MODEL__NAME)")
    sp.add_argument("--host", help="RNNSERVE_SERVER__HOST (default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="HTTP port (RNNSERVE_SERVER__HTTP_PORT, default 3000)")
    sp.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port (default 8001; 0 = off)")
    sp.add_argument("--workers", type=int, help="worker processes (RNNSERVE_SERVER__WORKERS, default 1)")
    sp.set_defaults(func=cmd_serve)
