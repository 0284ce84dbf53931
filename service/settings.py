"""The one settings tree. Environment variables use the ``RNNSERVE_`` prefix and ``__`` for nesting,
e.g. ``RNNSERVE_BATCHING__MAX_BATCH_SIZE=128``. Read once at each process entry point (the CLI, the
BentoML service module) and passed down explicitly.

The process model (workers, request timeout, HTTP concurrency, metrics directory) is part of the tree
too, so ``rnnserve serve`` and a plain ``bentoml serve`` of the bento get the same limits: the service
module builds BentoML's service configuration from it (``service.bento``).

No setting is silent: every group refuses keys it does not know, and ``unknown_variables`` names every
``RNNSERVE_*`` variable of an environment that is not a setting, with the closest one that is (the
entry points refuse to start with one: ``service.startup.check_environment``)."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "RNNSERVE_"


class Group(BaseModel):
    """A group of settings (``RNNSERVE_<GROUP>__<KEY>``): a key it does not know is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSettings(Group):
    name: str = "vowels"
    version: str = "latest"


class RepositorySettings(Group):
    """Several models per server (``Settings.models``) and Triton's repository API."""

    api_enabled: bool = True  # POST /v2/repository/... and gRPC Repository*: load, unload, index
    # "latest": loading a newer version of a served model makes it the default (a rollout: the old
    # version drains and is unloaded); "pinned": the default stays until it is unloaded.
    default_version: Literal["latest", "pinned"] = "latest"
    drain_timeout_s: float = Field(30.0, gt=0)  # how long a retired version may finish its requests


class ServerSettings(Group):
    host: str = "127.0.0.1"
    http_port: int = Field(3000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)  # 0 disables the gRPC server
    # gRPC engine: N > 0 = grpc's thread-pool server with N threads, each call's coroutine run on the
    # worker's loop (transports/grpc_threads.py: less CPU per unary call than grpc.aio, figures in
    # docs/BENCHMARKS.md); a call or an open stream holds a thread, and a call past N is refused with
    # RESOURCE_EXHAUSTED. 0 = grpc.aio on the loop (no limit on open streams).
    grpc_threads: int = Field(256, ge=0, le=4096)
    workers: int = Field(1, ge=1)  # BentoML worker processes (each has its own batching queue)
    request_timeout_s: float = Field(30.0, gt=0)  # BentoML's per-request timeout; gRPC drain grace
    max_concurrency: int = Field(512, ge=1)  # HTTP requests in flight (per server) before 503
    # Prometheus multiprocess directory; empty: $BENTOML_HOME/rnnserve-metrics/<host>-<http port>
    metrics_dir: str = ""
    # BentoML's access log line per HTTP request (off: ~30 us per request; rnnserve_* metrics count them)
    access_log: bool = False
    # TLS on both ports (service/tls.py): PEM certificate (chain) and its unencrypted key; with
    # tls_client_ca, mutual TLS: a client must present a certificate that CA signed
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Triton's restricted APIs (service/security.py): "<api>[,<api>...]:<key>=<value>" groups separated
    # by ";", the value inline or "@/path" (a mounted Secret); a request of a listed category without
    # header (gRPC metadata) <key> = <value> gets 403 / PERMISSION_DENIED. Empty: nothing restricted.
    restricted_api: str = ""

    @model_validator(mode="after")
    def _tls_files(self) -> ServerSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("tls_cert", "tls_key") if self.tls_cert else ("tls_key", "tls_cert")
            raise ValueError(f"server.{given} is set without server.{missing}: TLS needs both the certificate "
                             f"(RNNSERVE_SERVER__TLS_CERT) and its key (RNNSERVE_SERVER__TLS_KEY)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("server.tls_client_ca (mutual TLS) needs TLS: set RNNSERVE_SERVER__TLS_CERT and "
                             "RNNSERVE_SERVER__TLS_KEY too")
        return self

    @field_validator("restricted_api")
    @classmethod
    def _restricted_api(cls, value: str) -> str:
        from .security import parse_groups

        parse_groups(value)  # the syntax and the categories; files are read where the server starts
        return value


class BatchingSettings(Group):
    enabled: bool = True
    max_batch_size: int = Field(64, ge=1)  # sequences per adaptive batch
    max_latency_ms: int = Field(2000, ge=1)  # predicted or actual queue wait past this -> shed with 503
    max_queue: int = Field(1024, ge=1)  # sequences admitted (queued + running) before 429
    bucketing: Literal["cost", "none"] = "cost"  # length-aware planner, or one padded batch
    min_bucket_efficiency: float = Field(0.85, ge=0.0, le=1.0)  # real/computed timesteps per bucket
    # How work runs on models that can stream (service/batching/policies.py): "buckets" (whole sequences
    # and whole chunks, grouped by the length-bucket planner, state carried for stream chunks) or "steps"
    # (continuous step-level batching: sequences join and leave between iterations of at most max_steps
    # timesteps). Bidirectional models always use buckets. Measured (docs/BENCHMARKS.md, "Streams"): on
    # the lognormal mix at c64 buckets served 1.2x the throughput at a lower p99, so it is the default.
    policy: Literal["steps", "buckets"] = "buckets"
    # Deprecated name of ``policy`` (RNNSERVE_BATCHING__ENGINE): still honoured, with a warning line.
    engine: Literal["steps", "buckets"] | None = None
    max_steps: int = Field(64, ge=1)  # timesteps per iteration of the step policy

    @model_validator(mode="after")
    def _engine_is_policy(self) -> BatchingSettings:
        if self.engine is None:
            return self
        if "policy" in self.model_fields_set and self.policy != self.engine:
            raise ValueError(f"batching.engine={self.engine!r} (deprecated) and batching.policy={self.policy!r} "
                             f"disagree: set only RNNSERVE_BATCHING__POLICY")
        logging.getLogger("rnnserve.settings").warning(
            "RNNSERVE_BATCHING__ENGINE is deprecated: use RNNSERVE_BATCHING__POLICY=%s", self.engine)
        self.policy = self.engine
        return self


CLUSTER_SCHEMES = {"redis-cluster": "redis", "rediss-cluster": "rediss"}  # the store URL's -> one node's


def cluster_node_urls(url: str) -> list[str]:
    """The nodes of a ``redis-cluster://[user:password@]host:port[,host:port...]`` URL
    (``rediss-cluster://``: TLS), as one ``redis://`` (``rediss://``) URL each with the same credentials
    and options; ValueError naming what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {scheme}://")
    netloc = re.match(r"[^/?#]*", rest).group(0)
    tail = rest[len(netloc):]
    userinfo, at, hosts = netloc.rpartition("@")
    path = urlsplit(f"x://h{tail}").path
    if path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path.lstrip('/')!r}: leave the path out")
    urls = []
    for host in hosts.split(","):
        node = urlsplit(f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{host}{tail}")
        try:
            port = node.port
        except ValueError:
            port = -1
        if not node.hostname or port == -1:
            raise ValueError(f"node {host!r} of the cluster URL: expected host:port")
        urls.append(node.geturl())
    return urls


class StreamSettings(Group):
    """Stateful sequences (Triton's sequence extension): chunks of one stream share carried state."""

    enabled: bool = True
    # Where stream state lives between chunks: "memory" (in the worker that holds the stream: one
    # worker, nothing to set up) or a Redis URL, redis://host:port/db (rediss:// for TLS, unix:///path):
    # shared by every worker and replica, so a stream continues on any of them and outlives a worker;
    # or a Redis Cluster, redis-cluster://host:port[,host:port...] (rediss-cluster:// for TLS): streams
    # spread over its primaries in store_shards shards.
    store: str = "memory"
    store_timeout_s: float = Field(1.0, gt=0)  # every round trip to a shared store; past it: 503
    store_prefix: str = Field("rnnserve", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")  # key namespace
    # Redis Cluster only: shards per model, each with its own hash tag (so its own slot) and an equal
    # share of max_streams; at least the number of primaries (a few per primary spreads the load evenly).
    # Every worker and replica must use the same value (the key names include it).
    store_shards: int = Field(48, ge=1, le=1024)
    # live streams per worker (memory) or in the shared store, per model (redis); a START past it gets 429.
    # Redis Cluster: each of the store_shards shards may hold max_streams / store_shards of them.
    max_streams: int = Field(10_000, ge=1)
    idle_timeout_s: float = Field(60.0, gt=0)  # a stream without a chunk for this long is evicted
    max_stream_steps: int = Field(1_000_000, ge=1)  # timesteps one stream may accumulate
    max_id_length: int = Field(256, ge=1)  # characters of a string sequence_id

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value == "memory":
            return value
        if value.partition("://")[0] in CLUSTER_SCHEMES:
            cluster_node_urls(value)
            return value
        parts = urlsplit(value)
        where = parts.path if parts.scheme == "unix" else parts.hostname
        if parts.scheme not in ("redis", "rediss", "unix") or not where:
            raise ValueError("expected 'memory' or a Redis URL such as redis://host:6379/0 (rediss:// for TLS, "
                             "unix:///path/to/socket), or a Redis Cluster's, redis-cluster://host:port[,host:port...] "
                             "(rediss-cluster:// for TLS)")
        return value

    @model_validator(mode="after")
    def _shards_get_streams(self) -> StreamSettings:
        if self.clustered and self.max_streams < self.store_shards:
            raise ValueError(f"max_streams={self.max_streams} is below store_shards={self.store_shards}: with a "
                             f"Redis Cluster each shard holds max_streams / store_shards live streams; raise "
                             f"RNNSERVE_STREAMS__MAX_STREAMS or lower RNNSERVE_STREAMS__STORE_SHARDS")
        return self

    @property
    def clustered(self) -> bool:
        """Whether the store is a Redis Cluster."""
        return self.store.partition("://")[0] in CLUSTER_SCHEMES


class LimitSettings(Group):
    max_length: int = Field(2000, ge=1)  # timesteps per sequence
    max_sequences_per_request: int = Field(256, ge=1)
    max_tokens: int = Field(1024, ge=1)  # tokens one generation request may ask for (max_tokens)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # HTTP body and gRPC message


class RuntimeSettings(Group):
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0)  # 0 = one per CPU the server may run on
    # ONNX Runtime's worker threads busy-wait between runs by default. Measured (bench/serving.py,
    # s_spinning_on vs a_service): same throughput, 18% less server CPU per sequence with it off.
    allow_spinning: bool = False


class MetricsSettings(Group):
    enabled: bool = True  # rnnserve_* Prometheus metrics (BentoML's own stay on)


class DriftSettings(Group):
    enabled: bool = True
    window_sequences: int = Field(200, ge=10)  # sliding window of recent sequences (bounded memory)
    steps_per_sequence: int = Field(16, ge=1)  # timesteps sampled per sequence on the hot path
    min_sequences: int = Field(50, ge=1)  # no verdict before this many sequences
    interval_s: float = Field(10.0, gt=0)  # evaluation schedule, off the hot path
    feature_psi_threshold: float = Field(0.1, gt=0)
    length_psi_threshold: float = Field(0.25, gt=0)
    prediction_psi_threshold: float = Field(0.25, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", extra="forbid")

    model: ModelSettings = ModelSettings()
    # The models to serve: "vowels,motions:3" (name[:version], a name may repeat for several versions)
    # or "@path" to a file with one entry per line. Empty: model.name:model.version alone.
    models: str = ""
    repository: RepositorySettings = RepositorySettings()
    server: ServerSettings = ServerSettings()
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    streams: StreamSettings = StreamSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    metrics: MetricsSettings = MetricsSettings()
    drift: DriftSettings = DriftSettings()


# Settings whose value is a secret, or may hold one: never echoed in an error line.
SECRET_SETTINGS = frozenset({("server", "restricted_api")})

# Variables under the prefix that were once read and no longer are: what to use instead.
RETIRED = {
    "RNNSERVE_REQUIRE_E2E_TOOLS": "the test-suite's CI switch, renamed REQUIRE_E2E_TOOLS: not a server setting",
}


def env_names(prefix: str = PREFIX) -> set[str]:
    """Every environment variable name the settings tree accepts (for manifests/ConfigMaps)."""
    names = set()
    for section, field in Settings.model_fields.items():
        if not hasattr(field.annotation, "model_fields"):
            names.add(f"{prefix}{section}".upper())
            continue
        for key in field.annotation.model_fields:
            names.add(f"{prefix}{section}__{key}".upper())
    return names


def unknown_variables(environ: Mapping[str, str], prefix: str = PREFIX) -> list[tuple[str, str]]:
    """``(variable, hint)`` for every variable of ``environ`` under ``prefix`` (in any case, as
    pydantic-settings reads them) that is not a setting: what replaced it where it was retired, else
    ``did you mean <the closest setting by name>?``. A whole group as JSON (``RNNSERVE_SERVER='{...}'``)
    is a setting."""
    valid = env_names(prefix)
    groups = {f"{prefix}{section}".upper() for section in Settings.model_fields}
    out = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in valid or upper in groups:
            continue
        retired = RETIRED.get(upper)
        closest = difflib.get_close_matches(upper, sorted(valid), n=1, cutoff=0.0)[0]
        out.append((name, retired or f"did you mean {closest}?"))
    return out


def model_list(settings: Settings) -> list[tuple[str, str]]:
    """The (name, version) entries to serve, from ``models`` or the single ``model``."""
    from pathlib import Path

    spec = settings.models.strip()
    if spec.startswith("@"):
        spec = Path(spec[1:]).read_text()
    if not spec:
        return [(settings.model.name, settings.model.version)]
    out = []
    for item in (s.strip() for s in spec.replace("\n", ",").split(",")):
        if not item or item.startswith("#"):
            continue
        name, _, version = item.partition(":")
        if not name:
            raise ValueError(f"RNNSERVE_MODELS entry {item!r} has no model name")
        out.append((name, version or "latest"))
    if not out:
        raise ValueError("RNNSERVE_MODELS lists no model")
    return out
