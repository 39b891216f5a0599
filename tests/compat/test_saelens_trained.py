"""SAEs the trainer writes, read by SAELens 6.54 itself (compat suite, ``.venv-compat``): a Matryoshka BatchTopK SAE
is saved as an ordinary jumprelu or topk SAE, so SAELens loads the folder as that architecture and its encode and
forward equal sae-hub's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="compat suite: run in the SAELens + TransformerLens 3 env")

from sae_hub import SAE  # noqa: E402
from sae_hub.training import SyntheticActivations, TrainConfig, train_sae  # noqa: E402


@pytest.mark.parametrize("save_as", ["jumprelu", "topk"])
def test_saelens_loads_a_matryoshka_sae_as_a_plain_one_and_computes_the_same(save_as: str, tmp_path: Path) -> None:
    data = SyntheticActivations(d=16, n_features=64, mean_active=3, seed=0)
    cfg = TrainConfig(architecture="matryoshka_batchtopk", d_sae=128, k=4, batch_size=64, steps=30, lr=1e-2,
                      log_every=0, device="cpu", dead_window_tokens=20_000, num_threads=1,
                      batchtopk_save_as=save_as, output_dir=str(tmp_path / "sae"))
    train_sae(cfg, data, progress=False)
    ours, theirs = SAE.load_from_disk(tmp_path / "sae"), sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    assert theirs.cfg.architecture() == save_as
    assert ours.cfg.extra["matryoshka_widths"][-1] == 128
    x = data.sample(256, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-6, atol=1e-6)
