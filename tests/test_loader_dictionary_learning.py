"""dictionary_learning loader: generated trainer folders checked against the library's formulas.

No library-written fixtures exist; each case writes ``ae.pt`` + ``config.json`` as the trainer does and
compares with an independent re-statement of that class's ``encode``/``decode`` (docs/formats.md#dictionary-learning).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
import torch

from sae_hub import SAE
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    FormatDetectionError,
    MissingFileError,
    ShapeMismatchError,
    UnsafeCheckpointError,
    UnsupportedSAEError,
)
from sae_hub.loading import detect_format

d, D = 12, 48
TOL = 1e-5


def _relu(t):
    return torch.relu(t)


def _topk(post, k):
    vals, idx = post.topk(k, dim=-1)
    return torch.zeros_like(post).scatter(-1, idx, vals)


# reference encode/decode per class, written from the library source (state dict in, raw-space x)
def ref_autoencoder(s, x):
    f = _relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    return f, f @ s["decoder.weight"].T + s["bias"]


def ref_autoencoder_new(s, x):
    f = _relu(x @ s["encoder.weight"].T + s["encoder.bias"])
    return f, f @ s["decoder.weight"].T + s["decoder.bias"]


def ref_gated(s, x):
    x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    gate = (x_enc + s["gate_bias"] > 0).float()
    mag = _relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
    f = gate * mag
    return f, f @ s["decoder.weight"].T + s["decoder_bias"]


def ref_topk(s, x, use_threshold=False):
    post = _relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    f = post * (post > s["threshold"]) if use_threshold else _topk(post, int(s["k"]))
    return f, f @ s["decoder.weight"].T + s["b_dec"]


def ref_batchtopk(s, x):
    post = _relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    f = post * (post > s["threshold"])
    return f, f @ s["decoder.weight"].T + s["b_dec"]


def ref_matryoshka(s, x):
    post = _relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
    f = post * (post > s["threshold"])
    return f, f @ s["W_dec"] + s["b_dec"]


def ref_jumprelu(s, x):
    pre = x @ s["W_enc"] + s["b_enc"]
    f = _relu(pre * (pre > s["threshold"]))
    return f, f @ s["W_dec"] + s["b_dec"]


def _r(*shape, scale=0.3):
    return torch.randn(*shape) * scale


def make_state(dict_class: str, threshold: float | None = 0.5) -> dict[str, torch.Tensor]:
    if dict_class == "AutoEncoder":
        return {"bias": _r(d), "encoder.weight": _r(D, d), "encoder.bias": _r(D), "decoder.weight": _r(d, D)}
    if dict_class == "AutoEncoderNew":
        return {"encoder.weight": _r(D, d), "encoder.bias": _r(D), "decoder.weight": _r(d, D),
                "decoder.bias": _r(d)}
    if dict_class == "GatedAutoEncoder":
        return {"decoder_bias": _r(d), "encoder.weight": _r(D, d), "r_mag": _r(D), "gate_bias": _r(D),
                "mag_bias": _r(D), "decoder.weight": _r(d, D)}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        s = {"encoder.weight": _r(D, d), "encoder.bias": _r(D), "decoder.weight": _r(d, D), "b_dec": _r(d),
             "k": torch.tensor(6, dtype=torch.int32)}
        if threshold is not None:
            s["threshold"] = torch.tensor(threshold)
        return s
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {"W_enc": _r(d, D), "b_enc": _r(D), "W_dec": _r(D, d), "b_dec": _r(d),
                "k": torch.tensor(6, dtype=torch.int32), "threshold": torch.tensor(threshold),
                "group_sizes": torch.tensor([16, 32])}
    if dict_class == "JumpReluAutoEncoder":
        return {"W_enc": _r(d, D), "b_enc": _r(D), "W_dec": _r(D, d), "b_dec": _r(d), "threshold": _r(D).abs()}
    raise AssertionError(dict_class)


REFS = {"AutoEncoder": ref_autoencoder, "AutoEncoderNew": ref_autoencoder_new, "GatedAutoEncoder": ref_gated,
        "AutoEncoderTopK": ref_topk, "BatchTopKSAE": ref_batchtopk, "MatryoshkaBatchTopKSAE": ref_matryoshka,
        "JumpReluAutoEncoder": ref_jumprelu}
ARCH = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "GatedAutoEncoder": "gated", "AutoEncoderTopK": "topk",
        "BatchTopKSAE": "jumprelu", "MatryoshkaBatchTopKSAE": "jumprelu", "JumpReluAutoEncoder": "jumprelu"}


def write_trainer(folder: Path, dict_class: str, state, *, backup: bool = False, backup_factor: float | None = None,
                  k=6, config: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    trainer = {"dict_class": dict_class, "trainer_class": "SomeTrainer", "activation_dim": d, "dict_size": D,
               "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3, "submodule_name": "resid_post_layer_3",
               "lr": 1e-3, "steps": 100}
    if k is not None:
        trainer["k"] = k
    if config:
        (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": d,
                                                                                       "io": "out"}}))
    obj = state
    if backup:
        obj = {"step": 100, "ae": state, "optimizer": {"state": {}, "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(len(state)))}]},
            "config": trainer, "norm_factor": backup_factor}
    torch.save(obj, folder / "ae.pt")
    return folder


def _x(n=16):
    return torch.randn(n, d) * 2 + 0.5


def _check(path, ref_codes, ref_recon, x, **options) -> SAE:
    assert detect_format(path) == "dictionary-learning"
    sae = SAE.load_from_disk(path, **options)
    codes = sae.encode(x)
    errs = ((codes - ref_codes).abs().max().item(), (sae.decode(codes) - ref_recon).abs().max().item(),
            (sae(x) - ref_recon).abs().max().item())
    assert max(errs) <= TOL, errs
    assert (ref_codes > 0).any() and (ref_codes == 0).any()
    return sae


@pytest.mark.parametrize("dict_class", sorted(REFS))
def test_final_ae_pt(tmp_path, dict_class):
    torch.manual_seed(zlib.crc32(dict_class.encode()))
    state = make_state(dict_class)
    folder = write_trainer(tmp_path / "trainer_0", dict_class, state)
    x = _x()
    codes, recon = REFS[dict_class](state, x)
    sae = _check(folder, codes, recon, x)
    assert sae.cfg.architecture == ARCH[dict_class]
    assert sae.cfg.model_name == "EleutherAI/pythia-70m-deduped"
    assert sae.cfg.extra["dictionary_learning_layer"] == 3
    assert sae.cfg.provenance.source_files == [{"name": "ae.pt"}, {"name": "config.json"}]
    _check(folder / "ae.pt", codes, recon, x)


@pytest.mark.parametrize("dict_class", sorted(REFS))
def test_backup_gets_scale_biases(tmp_path, dict_class):
    """A backup was trained on x / s: the library's final model (scale_biases(s)) maps x to s * f(x / s)."""
    torch.manual_seed(1 + zlib.crc32(dict_class.encode()))
    state = make_state(dict_class)
    s = 3.5
    folder = write_trainer(tmp_path / "t", dict_class, state, backup=True, backup_factor=s)
    x = _x()
    codes_n, recon_n = REFS[dict_class](state, x / s)
    sae = _check(folder, codes_n * s, recon_n * s, x)
    assert any("scale_biases(norm_factor=3.5)" in c for c in sae.cfg.provenance.conversions)


def test_backup_without_norm_factor_and_checkpoint_files(tmp_path):
    state = make_state("AutoEncoderTopK")
    folder = write_trainer(tmp_path / "t", "AutoEncoderTopK", state, backup=True, backup_factor=None)
    x = _x()
    codes, recon = ref_topk(state, x)
    _check(folder, codes, recon, x)
    (folder / "checkpoints").mkdir()
    torch.save(state, folder / "checkpoints" / "ae_100.pt")
    _check(folder / "checkpoints" / "ae_100.pt", codes, recon, x)


def test_topk_threshold_and_k(tmp_path):
    torch.manual_seed(3)
    state = make_state("AutoEncoderTopK", threshold=0.4)
    folder = write_trainer(tmp_path / "t", "AutoEncoderTopK", state)
    x = _x()
    _check(folder, *ref_topk(state, x, use_threshold=True), x, use_threshold=True)
    # an older AutoEncoderTopK: no k buffer, k from config.json, or from the option
    old = {k: v for k, v in state.items() if k not in ("k", "threshold")}
    folder = write_trainer(tmp_path / "old", "AutoEncoderTopK", old, k=6)
    assert _check(folder, *ref_topk(state, x), x).cfg.k == 6
    folder = write_trainer(tmp_path / "nok", "AutoEncoderTopK", old, k=None)
    with pytest.raises(ConfigError, match="needs k"):
        SAE.load_from_disk(folder)
    assert _check(folder, *ref_topk(state, x), x, k=6).cfg.k == 6
    with pytest.raises(ConfigError, match="contradicts"):
        SAE.load_from_disk(tmp_path / "t", k=5)


def test_unset_threshold_means_relu(tmp_path):
    torch.manual_seed(4)
    for cls in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        state = make_state(cls, threshold=-1.0)
        folder = write_trainer(tmp_path / cls, cls, state)
        x = _x()
        sae = _check(folder, *REFS[cls](state, x), x)
        assert sae.cfg.architecture == "relu"


def test_normalize_decoder_option(tmp_path):
    torch.manual_seed(5)
    state = make_state("AutoEncoder")
    folder = write_trainer(tmp_path / "t", "AutoEncoder", state)
    norms = state["decoder.weight"].norm(dim=0)
    normed = dict(state)
    normed["decoder.weight"] = state["decoder.weight"] / norms
    normed["encoder.weight"] = state["encoder.weight"] * norms[:, None]
    normed["encoder.bias"] = state["encoder.bias"] * norms
    x = _x()
    sae = _check(folder, *ref_autoencoder(normed, x), x, normalize_decoder=True)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D))
    assert any("normalize_decoder" in c for c in sae.cfg.provenance.conversions)
    with pytest.raises(ConfigError, match="AutoEncoder only"):
        SAE.load_from_disk(write_trainer(tmp_path / "n", "AutoEncoderNew", make_state("AutoEncoderNew")),
                           normalize_decoder=True)


def test_detection_is_unambiguous(tmp_path):
    """AutoEncoderNew has nanoSAE's keys; the trainer folder / ae.pt name keeps it here."""
    folder = write_trainer(tmp_path / "t", "AutoEncoderNew", make_state("AutoEncoderNew"))
    assert detect_format(folder) == "dictionary-learning"
    assert detect_format(folder / "ae.pt") == "dictionary-learning"
    # AutoEncoder has the keys of nanoSAE's topk-branch SAE ({bias, encoder.*, decoder.weight})
    folder = write_trainer(tmp_path / "a", "AutoEncoder", make_state("AutoEncoder"))
    (folder / "checkpoints").mkdir()
    torch.save(make_state("AutoEncoder"), folder / "checkpoints" / "ae_10.pt")
    torch.save(make_state("AutoEncoder"), folder / "model.pt")
    assert detect_format(folder) == "dictionary-learning"
    assert detect_format(folder / "checkpoints" / "ae_10.pt") == "dictionary-learning"
    with pytest.raises(FormatDetectionError):
        detect_format(folder / "model.pt")  # next to a trainer config.json: not claimed by nanoSAE


def test_missing_config_and_bad_files(tmp_path):
    folder = write_trainer(tmp_path / "t", "AutoEncoder", make_state("AutoEncoder"), config=False)
    with pytest.raises(MissingFileError, match=r"config\.json"):
        SAE.load_from_disk(folder)
    with pytest.raises(MissingFileError, match=r"config\.json"):
        SAE.load_from_disk(folder / "ae.pt")
    folder = write_trainer(tmp_path / "trunc", "AutoEncoder", make_state("AutoEncoder"))
    data = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(folder)
    folder = write_trainer(tmp_path / "cfg", "AutoEncoder", make_state("AutoEncoder"))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(folder)
    (folder / "config.json").write_text(json.dumps({"buffer": {}}))
    with pytest.raises(ConfigError, match="trainer"):
        SAE.load_from_disk(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "activation_dim": 7}}))
    with pytest.raises(ShapeMismatchError, match="activation_dim"):
        SAE.load_from_disk(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "CrossCoder"}}))
    with pytest.raises(UnsupportedSAEError, match="CrossCoder"):
        SAE.load_from_disk(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "GatedAutoEncoder"}}))
    with pytest.raises(CorruptFileError, match="lacks"):
        SAE.load_from_disk(folder)


def test_old_batch_topk_is_refused(tmp_path):
    state = make_state("BatchTopKSAE", threshold=None)
    folder = write_trainer(tmp_path / "t", "BatchTopKSAE", state)
    with pytest.raises(UnsupportedSAEError, match="whole batch"):
        SAE.load_from_disk(folder)


def test_malicious_ae_pt(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = write_trainer(tmp_path / "t", "AutoEncoder", make_state("AutoEncoder"))
    torch.save({**make_state("AutoEncoder"), "x": Payload()}, folder / "ae.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"posix.system"):
        SAE.load_from_disk(folder)
    assert not marker.exists()


def test_buffer_that_is_not_an_object_is_a_config_error(tmp_path):
    """config.json's ``buffer`` (the trainer's activation buffer settings, read for ``io``) must be an object; a
    null one is as good as absent. It used to be ignored silently when malformed."""
    folder = write_trainer(tmp_path / "t", "AutoEncoder", make_state("AutoEncoder"))
    cfg = json.loads((folder / "config.json").read_text())
    for bad in ([1, 2], "out"):
        (folder / "config.json").write_text(json.dumps({**cfg, "buffer": bad}))
        with pytest.raises(ConfigError, match=r"buffer must be an object") as err:
            SAE.load_from_disk(folder)
        assert err.value.field == "buffer" and str(err.value.path).endswith("config.json")
    (folder / "config.json").write_text(json.dumps({**cfg, "buffer": None}))
    assert "dictionary_learning_io" not in SAE.load_from_disk(folder).cfg.extra
