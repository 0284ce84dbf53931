"""TLS files (service/tls.py): the start-up check's one line per mistake, BentoML's ssl configuration,
and the gRPC port's reload of changed files. Servers on TLS: tests/e2e/service/test_security.py."""

from __future__ import annotations

import logging
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from rnnserve.harness.certs import Authority, make_certs
from rnnserve.service import tls
from rnnserve.service.settings import ServerSettings


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def server(cert, key, ca="") -> ServerSettings:
    return ServerSettings(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(ca))


def test_good_files_pass(certs):
    tls.check(server(certs.server.cert, certs.server.key, certs.ca))
    tls.check(ServerSettings())  # no TLS: nothing to check


def test_each_mistake_is_one_line_with_its_fix(certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(certs.server.key.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))
    cases = [
        (server(tmp_path / "missing.crt", certs.server.key),
         "cannot read RNNSERVE_SERVER__TLS_CERT=", "No such file or directory: mount the file"),
        (server(certs.server.cert, certs.client.key),
         "RNNSERVE_SERVER__TLS_KEY=", "is not the key of the certificate RNNSERVE_SERVER__TLS_CERT="),
        (server(garbage, certs.server.key), "are not a PEM certificate and its key", "give PEM files"),
        (server(certs.server.cert, encrypted), "is encrypted", "give the server an unencrypted key"),
        (server(certs.server.cert, certs.server.key, garbage),
         "RNNSERVE_SERVER__TLS_CLIENT_CA=", "holds no PEM CA certificate"),
    ]
    for settings, cause, fix in cases:
        with pytest.raises(tls.TLSFileError) as info:
            tls.check(settings)
        line = str(info.value)
        assert cause in line and fix in line and "\n" not in line, line


def test_bentoml_ssl_configuration(certs):
    assert tls.bentoml_ssl(ServerSettings()) is None
    assert tls.bentoml_ssl(server(certs.server.cert, certs.server.key)) == {
        "enabled": True, "certfile": str(certs.server.cert), "keyfile": str(certs.server.key)}
    mutual = tls.bentoml_ssl(server(certs.server.cert, certs.server.key, certs.ca))
    assert mutual["ca_certs"] == str(certs.ca) and mutual["cert_reqs"] == 2  # ssl.CERT_REQUIRED


def test_grpc_reloads_changed_files_and_keeps_the_old_pair_until_the_new_one_is_whole(certs, tmp_path, caplog):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    files = tls.ReloadingFiles(str(cert), str(key))
    assert files.fetch() is None  # unchanged: grpc keeps the configuration it has
    fresh = Authority(tmp_path / "ca2", name="second CA").issue("server2")
    shutil.copy(fresh.cert, cert)  # half-way through a rotation: the new certificate, the old key
    with caplog.at_level(logging.WARNING, logger="rnnserve.tls"):
        assert files.fetch() is None
        assert files.fetch() is None  # and said once, not per connection
    assert caplog.text.count("cannot be used") == 1 and "is not the key of the certificate" in caplog.text
    shutil.copy(fresh.key, key)
    assert files.fetch() is not None  # the new pair, for the next connection
    assert files.fetch() is None
    assert tls.grpc_credentials(ServerSettings()) is None
    assert tls.grpc_credentials(server(cert, key)) is not None
