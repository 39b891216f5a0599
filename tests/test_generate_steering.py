"""Steering during generation: ``model.generate(...)`` of a ``transformers`` model under ``splice(...)``.

With the KV cache on, ``generate`` runs one forward over the prompt and then one forward per new token with
sequence length 1. The splice hooks the modules, so every one of those forwards goes through the SAE and its
edits. Checked here, on a tiny GPT-2 (LayerNorm family: centred residual sites with the per-forward mean
bookkeeping) and a tiny Llama:

* no edit + ``use_error_term=True``: the generated tokens are identical to generating without the splice;
* a planted edit (clamp one feature high) changes the generated tokens;
* the edit runs on every forward: the prompt forward sees ``[batch, prompt_len, d_sae]``, every later one
  ``[batch, 1, d_sae]``, one call per new token;
* the cached generation equals an independent reference: greedy decoding by hand *without* a cache, re-running
  the whole sequence under the same splice at each step (edits then apply at every position by construction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import tiny_family

from sae_hub import SAE, SAEConfig, splice

pytest.importorskip("transformers")

N_NEW = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def make_sae(hook: str, seed: int) -> SAE:
    sae = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=96, hook_name=hook))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * (0.125 if name == "W_enc"
                                                                                          else 0.3))
    return sae


def prompt(tok: Any) -> torch.Tensor:
    ids = tok(["The quick brown Fox jumps over", "Paris, 14 July 1789: Hello"], add_special_tokens=False,
              padding=True)["input_ids"]
    n = min(len(r) for r in ids)
    return torch.tensor([[tok.bos_token_id, *r[:n]] for r in ids])


def generate(hf: Any, ids: torch.Tensor) -> torch.Tensor:
    out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_NEW, do_sample=False,
                      use_cache=True, pad_token_id=hf.config.eos_token_id, eos_token_id=None)
    return out[:, ids.shape[1]:]


def greedy_without_cache(hf: Any, ids: torch.Tensor) -> torch.Tensor:
    seq = ids
    for _ in range(N_NEW):
        logits = hf(input_ids=seq, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, ids.shape[1]:]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
def test_generate_with_splice(root, family, hook):
    fam = tiny_family(family, root, bridge=False)
    hf, tok = fam["hf"], fam["tokenizer"]
    ids = prompt(tok)
    sae = make_sae(hook, 5)
    with torch.no_grad():
        base = generate(hf, ids)

        # 1. no edit, error term: token-identical
        with splice(hf, sae, use_error_term=True) as sp:
            same = generate(hf, ids)
        assert torch.equal(same, base)
        assert sp.features[hook].shape == (2, 1, 96)  # the last forward was a single cached step

        # 2. a planted edit: clamp the feature that moves the logits most to a large value
        busiest = int(sp.features[hook].abs().sum((0, 1)).argmax())
        shapes: list[tuple[int, ...]] = []

        def clamp(f: torch.Tensor) -> None:
            shapes.append(tuple(f.shape))
            f[..., busiest] = 12.0

        with splice(hf, {"s": sae}, use_error_term=True, edits={"s": clamp}):
            steered = generate(hf, ids)
            n_calls = len(shapes)
            reference = greedy_without_cache(hf, ids)
    assert not torch.equal(steered, base), "the planted edit did not change the generation"
    # 3. every forward of generate went through the edit: the prompt, then N_NEW - 1 single-token steps
    assert n_calls == N_NEW
    assert shapes[0] == (2, ids.shape[1], 96)
    assert all(s == (2, 1, 96) for s in shapes[1:n_calls])
    # 4. the KV-cached steered generation equals the no-cache reference that edits every position each step
    assert torch.equal(steered, reference)


def test_generate_without_splice_after_exit(root):
    """Hooks are gone after the block: generation is the unspliced one again."""
    fam = tiny_family("gpt2", root, bridge=False)
    hf, tok = fam["hf"], fam["tokenizer"]
    ids = prompt(tok)
    sae = make_sae("blocks.0.hook_resid_post", 6)
    with torch.no_grad():
        base = generate(hf, ids)
        with splice(hf, sae):  # no error term: the reconstruction replaces the activation
            spliced = generate(hf, ids)
        after = generate(hf, ids)
    assert not torch.equal(spliced, base)
    assert torch.equal(after, base)
