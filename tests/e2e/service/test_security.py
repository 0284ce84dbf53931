"""TLS and restricted API categories against real servers (``rnnserve serve`` on loopback) with stock
tritonclient, httpx and raw sockets; certificates from a throwaway CA made in the test
(rnnserve.harness.certs). What the unit tests check in process (every route and RPC refused when its
category is restricted) is checked here on the wire: HTTPS and gRPC TLS answer, plain text to a TLS
port fails cleanly, mutual TLS refuses a client without a certificate, restricted categories answer
403 / PERMISSION_DENIED without the key and with a wrong one, and the server stays ready throughout."""

from __future__ import annotations

import shutil
import socket
import ssl

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from rnnserve.harness.access import Access
from rnnserve.harness.certs import Authority, make_certs
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total

pytestmark = pytest.mark.e2e
F = 4  # the tiny bundle's features
API_KEY, ADMIN_KEY = "s3cret-api-key", "adm1n key"  # the admin value has a space: headers carry it as is
X = np.full((1, 5, F), 0.1, np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_settings(pair, ca=None) -> dict[str, str]:
    out = {"RNNSERVE_SERVER__TLS_CERT": str(pair.cert), "RNNSERVE_SERVER__TLS_KEY": str(pair.key)}
    if ca:
        out["RNNSERVE_SERVER__TLS_CLIENT_CA"] = str(ca)
    return out


@pytest.fixture(scope="module")
def tls_server(tiny_bundle, certs, tmp_path_factory):
    """TLS on both ports; inference restricted by a key read from a file, the repository API, the
    statistics and /metrics by another; health, metadata and model config open."""
    key_file = tmp_path_factory.mktemp("keys") / "api-key"
    key_file.write_text(API_KEY + "\n")  # as a mounted Secret often is: with a newline
    settings = {**tls_settings(certs.server),
                "RNNSERVE_SERVER__RESTRICTED_API": f"inference:x-api-key=@{key_file};"
                                                   f"model-repository,statistics,metrics:x-admin-key={ADMIN_KEY}"}
    with ServerProcess(tiny_bundle.name, settings, access=Access(certs.ca)) as srv:
        yield srv


def infer_inputs(module):
    inp = module.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return [inp]


def assert_still_ready(srv, access: Access, headers=None):
    r = httpx.get(srv.url + "/readyz", verify=access.ssl_context(), headers=headers, timeout=10)
    assert r.status_code == 200
    with access.grpc_channel(srv.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10,
                                                          metadata=tuple((headers or {}).items()))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_https_and_grpc_tls_answer_stock_tritonclient(tls_server, certs):
    access = Access(certs.ca)
    assert tls_server.url.startswith("https://")
    http = thttp.InferenceServerClient(tls_server.url.removeprefix("https://"), ssl=True,
                                       ssl_options={"ca_certs": str(certs.ca)})
    assert http.is_server_ready() and http.get_model_metadata("tiny")["name"] == "tiny"
    result = http.infer("tiny", infer_inputs(thttp), headers={"x-api-key": API_KEY})
    assert result.as_numpy("output").shape == (1, 3)
    rpc = tgrpc.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(certs.ca))
    assert rpc.is_server_ready() and rpc.get_model_config("tiny").config.name == "tiny"
    grpc_result = rpc.infer("tiny", infer_inputs(tgrpc), headers={"x-api-key": API_KEY})
    np.testing.assert_allclose(grpc_result.as_numpy("output"), result.as_numpy("output"), atol=1e-6)
    r = httpx.post(tls_server.url + "/predict", json={"sequences": X.tolist()}, headers={"x-api-key": API_KEY},
                   verify=access.ssl_context())
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_plain_text_to_a_tls_port_fails_cleanly_and_the_server_stays_ready(tls_server, certs):
    with pytest.raises(httpx.HTTPError):  # the TLS handshake fails: no HTTP answer at all
        httpx.get(tls_server.url.replace("https://", "http://") + "/readyz", timeout=10)
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=10) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" not in s.recv(4096)
    with grpc.insecure_channel(tls_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    other_ca = Authority(certs.directory / "untrusted", name="untrusted CA")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client that does not trust it
        httpx.get(tls_server.url + "/readyz", verify=ssl.create_default_context(cafile=str(other_ca.path)))
    assert_still_ready(tls_server, Access(certs.ca))


def test_restricted_inference_on_http_without_with_wrong_and_with_the_key(tls_server, certs):
    context = Access(certs.ca).ssl_context()
    body = {"sequences": X.tolist()}
    for headers in [{}, {"x-api-key": "wrong"}, {"x-api-key": API_KEY[:-1]}, {"x-admin-key": ADMIN_KEY}]:
        r = httpx.post(tls_server.url + "/predict", json=body, headers=headers, verify=context)
        assert r.status_code == 403, r.text
        assert r.json() == {"error": "this API (category 'inference') is restricted: send the header 'x-api-key' "
                                     "with its value", "kind": "forbidden", "field": "x-api-key"}
    http = thttp.InferenceServerClient(tls_server.url.removeprefix("https://"), ssl=True,
                                       ssl_options={"ca_certs": str(certs.ca)})
    with pytest.raises(InferenceServerException, match="category 'inference'") as info:
        http.infer("tiny", infer_inputs(thttp))
    assert API_KEY not in str(info.value)
    assert http.infer("tiny", infer_inputs(thttp), headers={"X-Api-Key": API_KEY}).as_numpy("output") is not None
    with pytest.raises(InferenceServerException, match="category 'statistics'"):
        http.get_inference_statistics("tiny")
    stats = http.get_inference_statistics("tiny", headers={"x-admin-key": ADMIN_KEY})
    # refused before a model is chosen (as Triton does): not the model's failures, only rnnserve_errors
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] == 0
    r = httpx.get(tls_server.url + "/metrics", verify=context)
    assert r.status_code == 403 and "category 'metrics'" in r.text
    r = httpx.get(tls_server.url + "/metrics", headers={"x-admin-key": ADMIN_KEY}, verify=context)
    assert r.status_code == 200 and total(r.text, "rnnserve_errors_total", kind="forbidden") >= 4
    assert_still_ready(tls_server, Access(certs.ca))


def test_restricted_categories_on_grpc_without_with_wrong_and_with_the_key(tls_server, certs):
    rpc = tgrpc.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(certs.ca))
    for headers in [None, {"x-api-key": "wrong"}, {"x-admin-key": ADMIN_KEY}]:
        with pytest.raises(InferenceServerException) as info:
            rpc.infer("tiny", infer_inputs(tgrpc), headers=headers)
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "category 'inference'" in info.value.message() and API_KEY not in info.value.message()
    assert rpc.infer("tiny", infer_inputs(tgrpc), headers={"x-api-key": API_KEY}) is not None
    # the key as Triton's --grpc-restricted-protocol clients send it
    assert rpc.infer("tiny", infer_inputs(tgrpc), headers={"triton-grpc-protocol-x-api-key": API_KEY}) is not None
    for call in (lambda h: rpc.get_model_repository_index(headers=h),
                 lambda h: rpc.get_inference_statistics("tiny", headers=h)):
        with pytest.raises(InferenceServerException, match="is restricted: send the header 'x-admin-key'"):
            call({"x-admin-key": "nope"})
        assert call({"x-admin-key": ADMIN_KEY}) is not None
    assert rpc.get_model_metadata("tiny").name == "tiny"  # metadata is not restricted here
    assert_still_ready(tls_server, Access(certs.ca))


def test_a_restricted_grpc_stream_is_refused_at_its_start_and_served_with_the_key(tls_server, certs):
    for headers, expected in [(None, "category 'inference'"), ({"x-api-key": API_KEY}, None)]:
        answers: list[tuple] = []
        rpc = tgrpc.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(certs.ca))
        rpc.start_stream(callback=lambda result, error, into=answers: into.append((result, error)), headers=headers)
        for _ in range(3):
            try:
                rpc.async_stream_infer("tiny", infer_inputs(tgrpc))
            except InferenceServerException as exc:
                # the refusal already ended the stream: tritonclient then refuses to send on it
                assert expected and "no longer in valid state" in exc.message(), exc
                break
        rpc.stop_stream()
        if expected:
            assert answers and all(result is None for result, _ in answers), answers
            assert expected in str(answers[0][1]) and API_KEY not in str(answers[0][1])
        else:
            assert len(answers) == 3 and all(error is None for _, error in answers), answers


def test_mutual_tls_refuses_a_client_without_a_certificate(tiny_bundle, certs):
    mutual = Access(certs.ca, certs.client.cert, certs.client.key)
    with ServerProcess(tiny_bundle.name, tls_settings(certs.server, certs.ca), access=mutual) as srv:
        r = httpx.post(srv.url + "/predict", json={"sequences": X.tolist()}, verify=mutual.ssl_context())
        assert r.status_code == 200
        rpc = tgrpc.InferenceServerClient(srv.grpc_url, **mutual.tritonclient_grpc())
        assert rpc.infer("tiny", infer_inputs(tgrpc)).as_numpy("output").shape == (1, 3)
        http = thttp.InferenceServerClient(srv.url.removeprefix("https://"), **mutual.tritonclient_http())
        assert http.is_server_ready()
        anonymous = Access(certs.ca)
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            httpx.get(srv.url + "/readyz", verify=anonymous.ssl_context(), timeout=10)
        with anonymous.grpc_channel(srv.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        stranger = Authority(certs.directory / "stranger", name="stranger CA").issue(
            "stranger", names=("stranger",), server=False, client=True)
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):  # a certificate the client CA did not sign
            httpx.get(srv.url + "/readyz", verify=Access(certs.ca, stranger.cert, stranger.key).ssl_context())
        assert_still_ready(srv, mutual)


def test_restricted_health_covers_the_probes_on_both_transports(tiny_bundle, certs):
    """BentoML's /livez and /readyz, v2 health and gRPC health follow the ``health`` category (the
    Kubernetes probes must then send the header: docs/OPERATIONS.md, "Security"); BentoML's own pages
    follow ``metadata``."""
    probe = Access(certs.ca, headers={"x-probe": "p"})
    settings = {**tls_settings(certs.server), "RNNSERVE_SERVER__RESTRICTED_API": "health:x-probe=p;metadata:x-m=m"}
    with ServerProcess(tiny_bundle.name, settings, access=probe) as srv:
        context = probe.ssl_context()
        for path in ("/livez", "/readyz", "/v2/health/ready", "/v2/models/tiny/ready"):
            assert httpx.get(srv.url + path, verify=context).status_code == 403, path
            assert httpx.get(srv.url + path, verify=context, headers={"x-probe": "p"}).status_code == 200, path
        with probe.grpc_channel(srv.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for path in ("/", "/docs.json", "/schema.json", "/v2/models/tiny", "/openapi.json"):
            assert httpx.get(srv.url + path, verify=context).status_code == 403, path
            assert httpx.get(srv.url + path, verify=context, headers={"x-m": "m"}).status_code == 200, path
        assert httpx.post(srv.url + "/predict", json={"sequences": X.tolist()}, verify=context).status_code == 200
        assert_still_ready(srv, probe, headers={"x-probe": "p"})


def test_certificate_rotation_reaches_new_grpc_connections_and_https_only_with_new_workers(tiny_bundle, certs,
                                                                                         tmp_path):
    """What docs/OPERATIONS.md says a rotation does: the files are replaced in place (as a Kubernetes
    Secret volume does); the gRPC port presents the new certificate to the next connection, the HTTP
    port keeps the one its workers loaded at start."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    renewed = Authority(tmp_path / "renewed", name="renewed CA")
    fresh = renewed.issue("server")
    old, new = Access(certs.ca), Access(renewed.path)
    with ServerProcess(tiny_bundle.name, {"RNNSERVE_SERVER__TLS_CERT": str(cert), "RNNSERVE_SERVER__TLS_KEY": str(key)},
                       access=old) as srv:
        rpc = tgrpc.InferenceServerClient(srv.grpc_url, **old.tritonclient_grpc())
        assert rpc.is_server_ready()
        shutil.copy(fresh.key, key)  # mid-rotation (new key, old certificate): gRPC keeps the old pair
        assert tgrpc.InferenceServerClient(srv.grpc_url, **old.tritonclient_grpc()).is_server_ready()
        shutil.copy(fresh.cert, cert)
        assert tgrpc.InferenceServerClient(srv.grpc_url, **new.tritonclient_grpc()).is_server_ready()
        with pytest.raises(InferenceServerException):
            tgrpc.InferenceServerClient(srv.grpc_url, **old.tritonclient_grpc()).is_server_ready()
        assert rpc.is_server_ready()  # a connection opened before keeps working
        assert httpx.get(srv.url + "/readyz", verify=old.ssl_context()).status_code == 200  # HTTP: the old one
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/readyz", verify=new.ssl_context())


def test_the_readmes_tls_client_works_as_printed(tiny_bundle, certs, tmp_path):
    """README's "TLS and restricted APIs" block and its curl line against a server with mutual TLS and
    the key the block sends; changed only: the ports, the test model (and its feature count), the
    files' directory."""
    import re
    import subprocess
    import sys

    from rnnserve.harness.launch import ROOT

    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                if "ssl=True" in b]
    key = re.search(r'headers=\{"x-api-key": "([^"]+)"\}', block).group(1)
    mutual = Access(certs.ca, certs.client.cert, certs.client.key)
    settings = {**tls_settings(certs.server, certs.ca), "RNNSERVE_SERVER__RESTRICTED_API": f"inference:x-api-key={key}"}
    for name, path in (("ca.crt", certs.ca), ("client.crt", certs.client.cert), ("client.key", certs.client.key)):
        shutil.copy(path, tmp_path / name)
    with ServerProcess(tiny_bundle.name, settings, access=mutual) as srv:
        code = (block.replace("127.0.0.1:3000", f"127.0.0.1:{srv.http_port}")
                .replace("127.0.0.1:8001", f"127.0.0.1:{srv.grpc_port}")
                .replace('"vowels"', '"tiny"').replace("(1, 5, 12)", f"(1, 5, {F})"))
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        (curl,) = re.findall(r"`(curl --cacert [^`]+)`", (ROOT / "README.md").read_text())
        curl = curl.replace("127.0.0.1:3000", f"127.0.0.1:{srv.http_port}").replace("/vowels", "/tiny")
        fetched = subprocess.run(["bash", "-c", curl.replace("curl ", "curl -f -S -s ", 1)], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(out.stdout.strip().splitlines()) == 2  # one label from each transport
    assert fetched.returncode == 0 and '"name":"tiny"' in fetched.stdout, fetched.stderr
