"""Neuronpedia client against a local stdlib HTTP server that speaks the public API's shape.

``GET /api/feature/{modelId}/{source}/{index}`` answers a feature record (fields as on neuronpedia.org:
``explanations[].description``, ``pos_str``/``pos_values``, ``neg_str``/``neg_values``, ``frac_nonzero``,
``maxActApprox``); a few indices trigger failures: a slow answer, HTTP 500, a non-JSON body, ``null``.
Anything else is a 404 with a JSON message, as the real site answers for unknown features.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sae_hub import SAE, SAEConfig
from sae_hub.analysis import neuronpedia
from sae_hub.analysis.neuronpedia import NeuronpediaError, NeuronpediaFeature, feature, feature_api_url
from sae_hub.errors import ConfigError, DownloadError, SaeHubError

NP_ID = "gpt2-small/0-res-jb"

RECORD = {
    "modelId": "gpt2-small",
    "layer": "0-res-jb",
    "index": "5",
    "explanations": [{"description": "numbers and digits", "typeName": "oai_token-act-pair"},
                     {"description": "years", "typeName": "np_max-act-logits"}, {"description": ""}],
    "pos_str": [" 1", " 2", " 3"],
    "pos_values": [0.91, 0.85, 0.5],
    "neg_str": [" the", " and"],
    "neg_values": [-0.7, -0.6],
    "frac_nonzero": 0.0123,
    "maxActApprox": 12.5,
    "activations": [{"tokens": ["a", "1"], "values": [0, 3.2]}],
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        prefix = f"/api/feature/{NP_ID}/"
        index = self.path[len(prefix):] if self.path.startswith(prefix) else None
        if index == "5":
            self._send(200, json.dumps(RECORD).encode())
        elif index == "6":
            self.server.release.wait(5)
            self._send(200, json.dumps(RECORD).encode())
        elif index == "7":
            self._send(500, b"internal boom", "text/plain")
        elif index == "8":
            self._send(200, b"<html>not json</html>", "text/html")
        elif index == "9":
            self._send(200, b"null")
        else:
            self._send(404, json.dumps({"message": "Feature not found"}).encode())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def sae_with_id(neuronpedia_id: str | None = NP_ID) -> SAE:
    return SAE(SAEConfig(architecture="relu", d_in=8, d_sae=16, neuronpedia_id=neuronpedia_id), device="meta")


def test_feature_is_fetched_and_parsed(server):
    got = feature(sae_with_id(), 5, base_url=server.url)
    assert isinstance(got, NeuronpediaFeature)
    assert server.paths == [f"/api/feature/{NP_ID}/5"]
    assert (got.model_id, got.source, got.index) == ("gpt2-small", "0-res-jb", 5)
    assert got.explanations == ["numbers and digits", "years"]
    assert got.top_logits == [(" 1", 0.91), (" 2", 0.85), (" 3", 0.5)]
    assert got.bottom_logits == [(" the", -0.7), (" and", -0.6)]
    assert got.frac_nonzero == 0.0123 and got.max_act_approx == 12.5
    assert got.url == f"{server.url}/{NP_ID}/5" and got.api_url == f"{server.url}/api/feature/{NP_ID}/5"
    assert got.raw["activations"][0]["values"] == [0, 3.2]
    assert feature(NP_ID, 5, base_url=server.url + "/").index == 5  # an id string works too


def test_base_url_from_environment_and_argument(server, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_URL", server.url)
    assert feature(sae_with_id(), 5).api_url.startswith(server.url)
    monkeypatch.setenv("NEURONPEDIA_URL", "http://127.0.0.1:9")  # the argument wins over the env
    assert feature(sae_with_id(), 5, base_url=server.url).frac_nonzero == 0.0123
    monkeypatch.delenv("NEURONPEDIA_URL")
    assert feature_api_url(NP_ID, 3) == "https://www.neuronpedia.org/api/feature/gpt2-small/0-res-jb/3"
    assert neuronpedia.resolve_base_url() == neuronpedia.DEFAULT_BASE_URL


def test_http_errors_are_typed_and_name_the_url(server):
    url404 = f"{server.url}/api/feature/{NP_ID}/12"
    with pytest.raises(NeuronpediaError, match="HTTP 404") as e404:
        feature(sae_with_id(), 12, base_url=server.url)
    err = e404.value
    assert err.status == 404 and err.url == url404 and url404 in str(err)
    assert isinstance(err, DownloadError) and isinstance(err, SaeHubError) and isinstance(err, OSError)
    with pytest.raises(NeuronpediaError, match="HTTP 500.*internal boom") as e500:
        feature(sae_with_id(), 7, base_url=server.url)
    assert e500.value.status == 500
    with pytest.raises(NeuronpediaError, match="not JSON"):
        feature(sae_with_id(), 8, base_url=server.url)
    with pytest.raises(NeuronpediaError, match="no feature record"):
        feature(sae_with_id(), 9, base_url=server.url)


def test_timeout_is_reported_quickly(server):
    t0 = time.perf_counter()
    with pytest.raises(NeuronpediaError, match=r"did not answer within 0.3 s") as e:
        feature(sae_with_id(), 6, base_url=server.url, timeout=0.3)
    assert time.perf_counter() - t0 < 4  # well before the server's 5 s answer
    assert e.value.url and e.value.url.endswith("/6")


def test_offline_is_reported():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NeuronpediaError, match=r"cannot reach Neuronpedia \(offline\?") as e:
        feature(sae_with_id(), 1, base_url=f"http://127.0.0.1:{port}", timeout=2)
    assert f"127.0.0.1:{port}/api/feature/{NP_ID}/1" in str(e.value)


def test_bad_ids_and_indices_are_config_errors():
    with pytest.raises(ConfigError, match="no neuronpedia_id"):
        feature(sae_with_id(None), 1)
    with pytest.raises(ConfigError, match="out of range"):
        feature(sae_with_id(), 16)
    with pytest.raises(ConfigError, match="modelId/source"):
        feature("gpt2-small", 1)
    with pytest.raises(ConfigError, match="modelId/source"):
        feature_api_url("a/b/c", 1)
