"""Offline stand-ins used by the tutorials, so every notebook runs in CI with no network.

Nothing here is part of sae-hub. A tutorial imports this module in one setup cell and gets:

* ``REPO``, ``FIXTURES``: the repository root and ``tests/fixtures`` (small checkpoints written by SAELens,
  overcomplete, lm-saes and nanoSAE themselves), found from this file's location, whatever the working
  directory; ``tests/`` is put on ``sys.path`` so ``tiny_model`` and ``hub_server`` import;
* :class:`Offline`: a temp folder, the tiny GPT-2 (``tests/tiny_model.py``, built and booted as a
  TransformerLens 4 ``TransformerBridge`` in a few seconds) and a local fake Hugging Face Hub
  (``tests/hub_server.py``) that the real ``huggingface_hub`` client is pointed at; ``close()`` stops the
  server, restores the client's settings and deletes the temp folder;
* :func:`corpus`: text for the tiny model; :func:`tiny_model_sae`: an SAE for the tiny model whose decoder rows
  are real activations (a stand-in for a pretrained SAE: features mean "this context looks like that one").

With internet access none of this is needed: use a real release (``SAE.from_pretrained("gpt2-small-res-jb",
"blocks.8.hook_resid_pre")``), a real model (``TransformerBridge.boot_transformers("gpt2")``) and the real Hub.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "REPO", "TESTS", "Offline", "corpus", "fixture_files", "repo_root", "tiny_model_sae"]


def repo_root() -> Path:
    """The sae-hub checkout this file belongs to (the folder holding ``pyproject.toml`` and ``tests/``)."""
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "tests" / "hub_server.py").is_file():
            return folder
    raise RuntimeError(f"cannot find the sae-hub repository above {here}: the tutorials need its tests/ folder")


REPO = repo_root()
TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The tokenizers library warns (and may deadlock) when a process that used it forks; the tutorials spawn CLIs.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tqdm.auto warns once per kernel when ipywidgets is not installed (progress bars then fall back to text).
warnings.filterwarnings("ignore", message="IProgress not found")


def fixture_files(case: str) -> list[Path]:
    """The checkpoint files of a fixture case (``"sae_lens/topk"``), without its reference/provenance files."""
    folder = FIXTURES / case
    names = json.loads((folder / "case.json").read_text(encoding="utf-8"))["files"]
    return [folder / name for name in names]


def corpus(n_docs: int = 200, seed: int = 0) -> list[str]:
    """``n_docs`` short documents for the tiny model: its tokenizer's training sentences, shuffled and joined
    two or three at a time (so the text is in-vocabulary and the windows are varied)."""
    from tiny_model import corpus as tokenizer_corpus

    sentences = list(dict.fromkeys(tokenizer_corpus()))  # the distinct sentences, in order
    rng = random.Random(seed)
    return [" ".join(rng.sample(sentences, rng.randint(2, 3))) for _ in range(n_docs)]


def tiny_model_sae(model: Any, hook_name: str, *, d_sae: int = 256, k: int = 8, seed: int = 0) -> Any:
    """A topk SAE on ``hook_name`` of the tiny model, standing in for a pretrained one.

    Decoder rows are centred, normalised activations of randomly chosen tokens of :func:`corpus` (``W_enc =
    W_dec.T``, ``b_dec`` = their mean), so a feature fires on contexts that resemble its prototype. It is not
    trained: good enough to show the mechanics of splicing and analysis, not a research artefact.
    """
    import torch

    from sae_hub import SAE, SAEConfig

    tokens = model.to_tokens(corpus(64, seed=seed))[:, :32]  # every document is longer: no padding
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook_name])
    x = cache[hook_name][:, 1:].reshape(-1, model.cfg.d_model).float()  # drop BOS (an outlier position)
    g = torch.Generator().manual_seed(seed)
    rows = x[torch.randperm(x.shape[0], generator=g)[:d_sae]]
    mean = x.mean(0)
    W_dec = rows - mean
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    cfg = SAEConfig(architecture="topk", d_in=model.cfg.d_model, d_sae=d_sae, k=k, apply_b_dec_to_input=True,
                    model_name="tiny-gpt2", hook_name=hook_name, context_size=32, prepend_bos=True)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_dec.copy_(mean)
        sae.b_enc.zero_()
    return sae


class Offline:
    """Temp folder + tiny model + local Hub for one notebook; call :meth:`close` at the end (also at exit).

    Also sets torch to one CPU thread: the tutorials' tensors are tiny, and on a shared 2-core CI machine thread
    synchronisation costs more than it saves (a 300-step toy training run: ~2.5 s on one thread, 9-24 s on two
    under load). Real workloads want the default.
    """

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.tmp = Path(tempfile.mkdtemp(prefix="sae-hub-tutorial-"))
        self.hub: Any = None
        self.hub_env: dict[str, str] = {}
        self._stack = contextlib.ExitStack()
        self._model_dir: Path | None = None
        atexit.register(self.close)

    def start_hub(self) -> Any:
        """Start the fake Hub on 127.0.0.1 and point ``huggingface_hub`` (in this process, and in subprocesses
        through the environment) at it, with its cache under the temp folder. Returns the ``HubServer``."""
        from hub_server import HubServer, hub_client_env

        if self.hub is None:
            server = HubServer().start()
            self._stack.callback(server.stop)
            self.hub_env = self._stack.enter_context(hub_client_env(server.url, self.tmp / "hf_home"))
            self.hub = server
        return self.hub

    def tiny_model(self) -> Any:
        """The tiny GPT-2 as a TransformerLens 4 ``TransformerBridge`` (compatibility mode, CPU, float32)."""
        from tiny_model import boot_tiny_model, build_tiny_gpt2_dir
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' own "writing/loading weights" bars
        try:
            if self._model_dir is None:
                self._model_dir = build_tiny_gpt2_dir(self.tmp / "tiny-gpt2")
            return boot_tiny_model(self._model_dir)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    def seed_fixture(self, repo_id: str, case: str, path_in_repo: str = "") -> str:
        """Commit a fixture's checkpoint files to ``repo_id`` on the fake Hub (under ``path_in_repo``)."""
        prefix = path_in_repo.strip("/")
        files = {(f"{prefix}/{f.name}" if prefix else f.name): f.read_bytes() for f in fixture_files(case)}
        return self.start_hub().commit(repo_id, files, message=f"Add {case}")

    def close(self) -> None:
        """Stop the Hub, restore the client's settings, delete the temp folder. Safe to call twice."""
        self._stack.close()
        self.hub = None
        shutil.rmtree(self.tmp, ignore_errors=True)
