"""An ``https://`` upstream with a certificate from a private CA (a self-hosted vLLM behind
an internal TLS terminator): trusted through ``ssl_verify: <CA bundle>``, refused with a
clear error when its CA is not trusted, and accepted unchecked with ``ssl_verify: false``.
A real uvicorn serves TLS with a certificate that trustme issues for 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.harness import gateway, sdk
from fakes.openai_upstream import RecordingUpstream
from support import LiveServer

from gateway.config import ConfigError, load_settings

trustme = pytest.importorskip("trustme")
pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@contextlib.contextmanager
def tls_upstream(ca: Any, tmp: Path) -> Iterator[tuple[LiveServer, RecordingUpstream]]:
    cert = ca.issue_cert("127.0.0.1")
    key, chain = tmp / "key.pem", tmp / "chain.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    up = RecordingUpstream()
    srv = LiveServer(up.app, ssl_keyfile=str(key), ssl_certfile=str(chain)).start()
    try:
        yield srv, up
    finally:
        srv.stop()


def backend(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "secure", "plugin": "openai_compatible", "base_url": url + "/v1",
            "model": "upstream-model", **kw}


def test_a_private_ca_is_trusted_through_its_bundle(ca: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with tls_upstream(ca, tmp_path) as (up_srv, up):
        assert up_srv.url.startswith("https://")
        with gateway(tmp_path, backend(up_srv.url, ssl_verify=str(bundle))) as gw:
            client = sdk(gw.url)
            r = client.chat.completions.create(model="secure", messages=HI, max_tokens=4)
            assert r.choices[0].message.content
            assert up.last.body["messages"] == HI
            chunks = list(client.chat.completions.create(
                model="secure", messages=HI, max_tokens=4, stream=True))
            assert chunks[-1].choices[0].finish_reason
            assert len(up.requests) == 2


def test_an_untrusted_certificate_is_refused_with_a_clear_error(ca: Any, tmp_path: Path) -> None:
    with (tls_upstream(ca, tmp_path) as (up_srv, up),
          gateway(tmp_path, backend(up_srv.url)) as gw,
          pytest.raises(openai.APIStatusError) as e):
        sdk(gw.url).chat.completions.create(model="secure", messages=HI, max_tokens=4)
    assert e.value.status_code == 503
    message = e.value.response.json()["error"]["message"]
    assert "TLS certificate is not trusted" in message and "ssl_verify" in message
    assert not up.requests  # nothing was sent over the refused connection


def test_verification_can_be_turned_off(ca: Any, tmp_path: Path) -> None:
    with (tls_upstream(ca, tmp_path) as (up_srv, up),
          gateway(tmp_path, backend(up_srv.url, ssl_verify=False)) as gw):
        r = sdk(gw.url).chat.completions.create(model="secure", messages=HI, max_tokens=4)
    assert r.choices[0].message.content
    assert len(up.requests) == 1


def test_a_missing_bundle_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ssl_verify"):
        from gateway.http.app import create_app

        create_app(load_settings(None, backends=[backend(
            "https://127.0.0.1:9", ssl_verify=str(tmp_path / "nope.pem"))]))
