"""Shared pytest fixtures.

Hub fixtures (see ``tests/hub_server.py`` for the why): ``hub`` starts a fake Hugging Face Hub on
127.0.0.1 and points the already-imported ``huggingface_hub`` client at it for the duration of one test.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_server import HubServer, hub_client_env

# tests/compat needs SAELens 6 + TransformerLens 3 (their own environment, made by .ci/bootstrap.py test).
collect_ignore = [] if importlib.util.find_spec("sae_lens") else ["compat"]
# tests/compat_circuit_tracer needs circuit-tracer 0.5.0 (its own environment, .venv-ct: it pins huggingface-hub<1).
if not importlib.util.find_spec("circuit_tracer"):
    collect_ignore.append("compat_circuit_tracer")


@pytest.fixture
def hub_home(tmp_path: Path) -> Path:
    """Per-test ``HF_HOME`` used by ``hub``; the download cache (``HF_HUB_CACHE``) is ``hub_home / "hub"``."""
    path = tmp_path / "hf_home"
    path.mkdir()
    return path


@pytest.fixture
def hub_cache(hub_home: Path) -> Path:
    """Per-test ``HF_HUB_CACHE`` (``hf_hub_download`` writes ``models--org--name/{blobs,snapshots,refs}``)."""
    return hub_home / "hub"


@pytest.fixture
def hub(hub_home: Path) -> Iterator[HubServer]:
    """A fresh fake Hub, with the client configured to use it (restored afterwards).

    Sets/patches (env vars *and* the import-time copies in ``huggingface_hub.constants`` etc.):
    ``HF_ENDPOINT`` = ``hub.url``, ``HF_HOME`` = ``hub_home``, ``HF_HUB_CACHE`` = ``hub_home/hub``,
    ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_XET=1``, offline mode off, token path inside
    ``hub_home`` (no real token is sent), ``HF_TOKEN`` unset. Fails the test if the server hit an
    internal error (a bug in the fake, not in the code under test).
    """
    with HubServer() as server, hub_client_env(server.url, hub_home):
        yield server
    assert not server.errors, "fake hub raised while handling requests:\n" + "\n".join(server.errors)


class _InstantSleepTime:
    """Stand-in for the ``time`` module inside huggingface_hub: ``sleep`` records instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make the client's retry/back-off sleeps instant; returns the list of sleeps it asked for.

    Patches the ``time`` module seen by ``huggingface_hub.utils._http`` (``http_backoff``: 1, 2, 4, 8, 8 s)
    and ``huggingface_hub.file_download`` (``http_get`` sleeps 1 s before resuming), not the global
    ``time.sleep``, so the fake server's own delays (``hub.slow``) keep working.
    """
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    fake = _InstantSleepTime()
    monkeypatch.setattr(_http, "time", fake)
    monkeypatch.setattr(file_download, "time", fake)
    return fake.sleeps


# ------------------------------------------------------ tiny TransformerLens model (tests/tiny_model.py)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny GPT-2 checkpoint + trained byte-level BPE tokenizer, built once per session, offline."""
    from tiny_model import build_tiny_gpt2_dir

    return build_tiny_gpt2_dir(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Any:
    """The tiny GPT-2 booted as a TransformerLens 4 ``TransformerBridge`` in compatibility mode (CPU, fp32).

    Session-scoped for speed: tests must not leave hooks attached (``splice`` removes its own) or change
    weights/flags; call ``model.reset_hooks()`` in a test that adds hooks by hand and may fail midway.
    """
    from tiny_model import boot_tiny_model

    return boot_tiny_model(tiny_model_dir)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny training problems: one thread is as fast, and immune to OpenMP threads spin-waiting on a shared,
    oversubscribed CPU (which can make a 1 s test take 30 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
