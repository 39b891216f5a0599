"""An SAE trained by sae-hub is one SAELens's ``ActivationsStore.from_sae`` (what SAEBench evaluates with) accepts,
and the store it builds reads what the SAE was trained on.

Runs in the SAELens 6.54 + TransformerLens 3 environment (``python3 .ci/bootstrap.py test`` makes it). The model is
a tiny TransformerLens 3 ``HookedTransformer`` with the offline byte-level BPE tokenizer of ``tests/tiny_model.py``.
The reference for "what the SAE was trained on" is the sae-hub source's own rows for a context; SAELens computes its
rows for the same context from the SAE's saved metadata (hook, context size, BOS, ``seqpos_slice``) alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="compat suite: run in the SAELens + TransformerLens 3 env")
pytest.importorskip("transformer_lens")
datasets = pytest.importorskip("datasets")

from sae_lens.training.activations_store import ActivationsStore  # noqa: E402
from tiny_model import _train_tokenizer, corpus  # noqa: E402

from sae_hub.training import ModelActivationSource, TrainConfig, train_sae  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
CTX = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    _train_tokenizer().save_pretrained(folder)  # TransformerLens re-creates the tokenizer from its folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=len(tokenizer),
                                  act_fn="gelu", normalization_type="LN", model_name="tiny-tl3", seed=0)
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def test_activations_store_from_sae_accepts_a_sae_hub_trained_sae(model: Any, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    texts = corpus()[:24]
    src = ModelActivationSource(model, texts, HOOK, context_size=CTX, dataset_path="tiny/corpus", buffer_tokens=512)
    train_sae(TrainConfig(architecture="topk", d_sae=64, k=4, batch_size=64, steps=3, log_every=0, init_tokens=64,
                          device="cpu", output_dir=str(tmp_path / "sae")), src, progress=False)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    meta = theirs.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.dataset_path) == ("tiny-tl3", HOOK, "tiny/corpus")

    store = ActivationsStore.from_sae(model, theirs, datasets.Dataset.from_dict({"text": texts}), streaming=False,
                                      store_batch_size_prompts=4, n_batches_in_buffer=2, train_batch_size_tokens=16,
                                      total_tokens=1024)
    assert (store.hook_name, store.context_size, store.prepend_bos) == (HOOK, CTX, True)
    assert store.training_context_size == src.tokens_per_context == CTX - 1  # BOS position not trained on
    assert store.normalize_activations == "none"  # the trainer's input scaling is folded into the weights

    tokens = store.get_batch_tokens()
    assert tokens.shape == (4, CTX) and bool((tokens[:, 0] == model.tokenizer.bos_token_id).all())
    # For the same contexts, SAELens's rows (from the saved metadata alone) are the rows sae-hub trained on.
    contexts = torch.stack([c for c, _ in zip(src.contexts(), range(4), strict=False)])
    ours = src._activations(contexts)
    theirs_rows = store.get_activations(contexts).reshape(-1, model.cfg.d_model)
    torch.testing.assert_close(theirs_rows, ours, atol=1e-6, rtol=1e-6)
    batch = store.next_batch()
    assert batch.shape == (16, model.cfg.d_model) and torch.isfinite(batch).all()
    with torch.no_grad():
        assert theirs.encode(batch).shape == (16, 64)
