"""The pieces of gateway/tls.py: one context per setting, strict unless told otherwise, and the
CA file check config.py uses, with a certificate authority made for the test (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from gateway.options import UpstreamTLS
from gateway.tls import ClientContexts, ca_file_problem, client_context, server_hostname

NAME = "legacy.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


# -- the pieces ------------------------------------------------------------------------------------


def test_one_context_per_distinct_setting(ca_file: str) -> None:
    contexts = ClientContexts()
    verified = contexts.get(UpstreamTLS(ca_file=ca_file))
    assert contexts.get(UpstreamTLS(ca_file=ca_file)) is verified
    assert contexts.get(UpstreamTLS(ca_file=ca_file, server_name=NAME)) is not verified
    assert contexts.get(UpstreamTLS()) is not verified


def test_contexts_are_strict_unless_verify_is_false(ca_file: str) -> None:
    strict = client_context(UpstreamTLS(ca_file=ca_file))
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert strict.cert_store_stats()["x509_ca"] == 1
    loose = client_context(UpstreamTLS(verify=False))
    assert (loose.verify_mode, loose.check_hostname) == (ssl.CERT_NONE, False)
    assert server_hostname(UpstreamTLS(), "legacy") == "legacy"
    assert server_hostname(UpstreamTLS(server_name=NAME), "10.0.0.7") == NAME


def test_ca_file_problems(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    assert ca_file_problem(ca_file) is None
    leaf = tmp_path / "leaf.pem"
    ca.issue_cert(NAME).cert_chain_pems[0].write_to_path(str(leaf))
    key = tmp_path / "key.pem"
    ca.issue_cert(NAME).private_key_pem.write_to_path(str(key))
    der = tmp_path / "ca.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    problems = {
        name: ca_file_problem(str(path))
        for name, path in {
            "missing": tmp_path / "nope.pem",
            "directory": tmp_path,
            "leaf": leaf,
            "key": key,
            "der": der,
        }.items()
    }
    assert "does not exist" in str(problems["missing"])
    assert "is a directory" in str(problems["directory"])
    assert "holds no CA certificate" in str(problems["leaf"])
    assert "holds no PEM certificate" in str(problems["key"])
    assert "openssl x509 -inform der" in str(problems["der"])
