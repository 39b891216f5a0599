"""lm-saes / llamascopium loader (all four eras) against the library's own outputs and independent formulas.

* The llamascopium 2.0.0b34 fixtures (era C, written and run by the real library) must be reproduced by
  ``SAE.load_from_disk(case)`` with no format hint, within 1e-5 (float32), and the ``fold_activation_scale``
  option must reproduce the ``*_fold_activation_scale`` keys.
* Generated checkpoints for eras A, B0/B1/B2 and C variants are checked against reference implementations
  of each era's semantics written out below from docs/formats.md#lm-saes (and the library code it cites), not by
  calling the loader: tensors in the library's own names and layouts, the library's order of operations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hub import SAE, detect_format
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    FormatDetectionError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnsupportedSAEError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "llamascopium"
CASES = ["jumprelu_dataset_wise", "relu_inference_no_norm", "topk_dataset_wise"]
ATOL = RTOL = 1e-5
# bf16 weights: the SAE multiplies in bf16 (like the library run in bf16), the references below in fp32 on the
# same bf16 values, so every product carries ~2^-8 relative error that sums over d_in (or d_sae) terms. Tolerance:
# |sae - ref| <= 2 % of the largest |ref| of the tensor compared, on rows where no gate/top-k decision lies
# within 1 % (of the largest gate score) of its boundary: there bf16 rounding may legitimately flip the decision.
BF16_REL, BF16_MARGIN = 0.02, 0.01


def _check_bf16(sae: SAE, x: torch.Tensor, f_ref: torch.Tensor, r_ref: torch.Tensor, margin: torch.Tensor) -> None:
    codes, recon = _run(sae, x)
    clear = margin > BF16_MARGIN  # decisions not within 1 % of their boundary
    assert torch.equal((codes != 0)[clear], (f_ref != 0)[clear])
    same_support = ((codes != 0) == (f_ref != 0)).all(dim=-1)  # rows where no near-boundary decision flipped
    assert same_support.float().mean() >= 0.75
    e_codes = assert_close_bf16(torch.where(clear, codes.float(), 0), torch.where(clear, f_ref, 0))
    e_recon = assert_close_bf16(recon[same_support], r_ref[same_support])
    print(f"bf16 max error / max |value|: codes {e_codes:.4f}, recon {e_recon:.4f}")


def assert_close_bf16(got: torch.Tensor, want: torch.Tensor) -> float:
    """bf16 tolerance (see BF16_REL); returns the measured max |error| / max |want|."""
    err = (got.float() - want).abs().max().item() / want.abs().max().item()
    assert err <= BF16_REL, f"bf16 relative error {err:.4f} > {BF16_REL}"
    return err

# the documented warning about llamascopium's fold bug, in tests that are not about it
_FOLD_WARNING = pytest.mark.filterwarnings("ignore:.*does not rescale the JumpReLU threshold:UserWarning")


def _run(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = sae.encode(x)
        return codes, sae.decode(codes)


# ================================================================================ llamascopium fixtures


@pytest.mark.parametrize("case", [*CASES, "batchtopk_dataset_wise"])
def test_fixtures_are_detected_as_lm_saes(case):
    assert detect_format(FIXTURES / case) == "lm-saes"


@pytest.mark.parametrize("case", CASES)
def test_fixture_codes_and_recon_by_autodetection(case):
    ref = load_file(FIXTURES / case / "reference.safetensors")
    sae = SAE.load_from_disk(FIXTURES / case)
    assert sae.cfg.provenance.source_format == "lm-saes"
    assert sae.cfg.hook_name == "blocks.6.hook_resid_post" and not sae.cfg.is_transcoder
    codes, recon = _run(sae, ref["x"])
    torch.testing.assert_close(codes, ref["codes"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, ref["recon"], atol=ATOL, rtol=RTOL)


@_FOLD_WARNING
@pytest.mark.parametrize("case", ["jumprelu_dataset_wise", "topk_dataset_wise"])
def test_fixture_fold_activation_scale(case):
    ref = load_file(FIXTURES / case / "reference.safetensors")
    sae = SAE.load_from_disk(FIXTURES / case, fold_activation_scale=True)
    assert sae.cfg.norm_scaling_factor is None and sae.cfg.normalize_activations == "none"
    codes, recon = _run(sae, ref["x"])
    torch.testing.assert_close(codes, ref["codes_fold_activation_scale"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, ref["recon_fold_activation_scale"], atol=ATOL, rtol=RTOL)


def test_fixture_jumprelu_fold_replicates_the_threshold_bug_and_warns():
    ref = load_file(FIXTURES / "jumprelu_dataset_wise" / "reference.safetensors")
    with pytest.warns(UserWarning, match="does not rescale the JumpReLU threshold"):
        sae = SAE.load_from_disk(FIXTURES / "jumprelu_dataset_wise", fold_activation_scale=True)
    codes, _ = _run(sae, ref["x"])
    # the library's folded codes fire far more often than the unfolded ones: not a pure rescaling
    assert (codes != 0).sum() > 2 * (ref["codes"] != 0).sum()


def test_fixture_topk_ranks_by_decoder_norm_and_reports_z():
    """sparsity_include_decoder_norm: the library ranks relu(z)*||W_D_j|| but reports z (decoder norms are not 1)."""
    sae = SAE.load_from_disk(FIXTURES / "topk_dataset_wise")
    assert sae.cfg.rank_by_decoder_norm and not sae.cfg.rescale_acts_by_decoder_norm
    assert (sae.W_dec_norm - 1).abs().max() > 0.5
    ref = load_file(FIXTURES / "topk_dataset_wise" / "reference.safetensors")
    with torch.no_grad():
        vals, idx = sae.encode_topk(ref["x"])
        torch.testing.assert_close(sae.decode_sparse(vals, idx), ref["recon"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.zeros(8, 64).scatter(-1, idx, vals), ref["codes"], atol=ATOL, rtol=RTOL)


def test_fixture_garbage_norm_is_ignored_in_inference_mode():
    w = load_file(FIXTURES / "relu_inference_no_norm" / "sae_weights.safetensors")
    assert w["dataset_average_activation_norm.blocks.6.hook_resid_post"].abs() < 1e-30  # really garbage
    sae = SAE.load_from_disk(FIXTURES / "relu_inference_no_norm")
    assert sae.cfg.norm_scaling_factor is None and sae.cfg.normalize_activations == "none"


# ---------------------------------------------------------------------------------- batchtopk


def test_batchtopk_default_refuses_with_the_opt_ins_named():
    with pytest.raises(UnsupportedSAEError) as e:
        SAE.load_from_disk(FIXTURES / "batchtopk_dataset_wise")
    msg = str(e.value)
    assert "whole batch" in msg and "batchtopk='topk'" in msg and "batchtopk='jumprelu'" in msg
    assert "threshold=" in msg and "calibration_activations=" in msg


def _library_batchtopk(x: torch.Tensor, folder: Path, fold: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """llamascopium era C act_fn='batchtopk' on a batch, written out from the library code (independent)."""
    cfg = json.loads((folder / "config.json").read_text())
    w = load_file(folder / "sae_weights.safetensors")
    d, k = cfg["d_model"], cfg["top_k"]
    s = math.sqrt(d) / w[f"dataset_average_activation_norm.{cfg['hook_point_in']}"].item()
    W_E, b_E, W_D, b_D = w["W_E"], w["b_E"], w["W_D"], w["b_D"]
    if fold:
        b_E, b_D, sf = b_E / s, b_D / s, torch.tensor(1.0)
    else:
        sf = torch.tensor(s, dtype=torch.float32)
    n = W_D.norm(dim=1)
    z = (x * sf) @ W_E + b_E
    h = z * n
    h = h * h.gt(0)
    flat = h.flatten()
    idx = flat.abs().topk(k * x.shape[0]).indices
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[idx] = True
    f = (flat * keep).view_as(h) / n
    return f, (f @ W_D + b_D) / sf


def test_independent_batchtopk_reproduces_the_fixture():
    """Sanity check of the reference above against the library's stored outputs."""
    ref = load_file(FIXTURES / "batchtopk_dataset_wise" / "reference.safetensors")
    for fold, key in ((False, ""), (True, "_fold_activation_scale")):
        f, r = _library_batchtopk(ref["x"], FIXTURES / "batchtopk_dataset_wise", fold)
        torch.testing.assert_close(f, ref[f"codes{key}"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(r, ref[f"recon{key}"], atol=ATOL, rtol=RTOL)


@_FOLD_WARNING
@pytest.mark.parametrize("fold", [False, True])
def test_batchtopk_jumprelu_calibrated_on_the_batch_reproduces_the_library_batch(fold):
    """One global threshold calibrated on these rows keeps exactly the top k*N gate scores: the library's result."""
    folder = FIXTURES / "batchtopk_dataset_wise"
    ref = load_file(folder / "reference.safetensors")
    sae = SAE.load_from_disk(folder, batchtopk="jumprelu", calibration_activations=ref["x"],
                             fold_activation_scale=fold)
    assert sae.cfg.architecture == "jumprelu"
    key = "_fold_activation_scale" if fold else ""
    codes, recon = _run(sae, ref["x"])
    torch.testing.assert_close(codes, ref[f"codes{key}"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, ref[f"recon{key}"], atol=ATOL, rtol=RTOL)
    assert (codes != 0).sum() == 6 * ref["x"].shape[0]


def test_batchtopk_calibration_gives_mean_l0_k_on_fresh_activations():
    folder = FIXTURES / "batchtopk_dataset_wise"
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(3)) * 3 + 1
    sae = SAE.load_from_disk(folder, batchtopk="jumprelu", calibration_activations=x)
    codes, _ = _run(sae, x)
    assert (codes != 0).sum(-1).float().mean().item() == 6.0
    f_lib, _ = _library_batchtopk(x, folder)  # the library on the same 300-row batch
    torch.testing.assert_close(codes, f_lib, atol=ATOL, rtol=RTOL)


def test_batchtopk_jumprelu_with_a_given_threshold_matches_the_gate_formula():
    folder = FIXTURES / "batchtopk_dataset_wise"
    x = load_file(folder / "reference.safetensors")["x"]
    t = 0.3
    sae = SAE.load_from_disk(folder, batchtopk="jumprelu", threshold=t)
    w = load_file(folder / "sae_weights.safetensors")
    s = torch.tensor(4.0 / w["dataset_average_activation_norm.blocks.6.hook_resid_post"].item(), dtype=torch.float32)
    z = (x * s) @ w["W_E"] + w["b_E"]
    n = w["W_D"].norm(dim=1)
    want = z * ((z * n) > t)  # gate on relu(z)*||W_D_j|| > t, value z
    codes, recon = _run(sae, x)
    torch.testing.assert_close(codes, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, (want @ w["W_D"] + w["b_D"]) / s, atol=ATOL, rtol=RTOL)


def test_batchtopk_topk_opt_in_equals_the_library_on_one_token_batches():
    """batchtopk over a one-row batch keeps that row's top k: the per-token opt-in, row by row."""
    folder = FIXTURES / "batchtopk_dataset_wise"
    x = load_file(folder / "reference.safetensors")["x"]
    sae = SAE.load_from_disk(folder, batchtopk="topk")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 6 and sae.cfg.rank_by_decoder_norm
    codes, recon = _run(sae, x)
    want = torch.cat([_library_batchtopk(x[i:i + 1], folder)[0] for i in range(x.shape[0])])
    want_recon = torch.cat([_library_batchtopk(x[i:i + 1], folder)[1] for i in range(x.shape[0])])
    torch.testing.assert_close(codes, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, want_recon, atol=ATOL, rtol=RTOL)
    # ...and it differs from the library's 8-row batch result, which is why it is an opt-in
    assert not torch.equal(codes != 0, load_file(folder / "reference.safetensors")["codes"] != 0)


@pytest.mark.parametrize("opts", [
    {"batchtopk": "jumprelu"},
    {"batchtopk": "jumprelu", "threshold": 0.1, "calibration_activations": torch.zeros(4, 16)},
    {"batchtopk": "sometimes"},
    {"batchtopk": "topk", "threshold": 0.3},
    {"batchtopk": "jumprelu", "threshold": "high"},
])
def test_batchtopk_option_errors(opts):
    with pytest.raises(ConfigError):
        SAE.load_from_disk(FIXTURES / "batchtopk_dataset_wise", **opts)


def test_batchtopk_calibration_shape_is_checked():
    with pytest.raises(ShapeMismatchError):
        SAE.load_from_disk(FIXTURES / "batchtopk_dataset_wise", batchtopk="jumprelu",
                           calibration_activations=torch.zeros(4, 15))


def test_batchtopk_option_on_a_non_batchtopk_checkpoint_is_an_error():
    with pytest.raises(ConfigError):
        SAE.load_from_disk(FIXTURES / "relu_inference_no_norm", batchtopk="topk")


# ================================================================================ generated checkpoints

D, EF, TOP_K = 16, 4, 6
S = D * EF
NORM_IN, NORM_OUT = 12.5, 7.25


def _rand(g: torch.Generator, *shape: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _x(n: int = 24, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 3.0 + (torch.randn(D, generator=g) * 2 + 1)


def _params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_E": _rand(g, D, S), "b_E": _rand(g, S), "W_D": _rand(g, S, D) * (1 + torch.rand(S, 1, generator=g)),
        "b_D": _rand(g, D, scale=0.5), "log_thr": torch.log(0.1 + torch.rand(S, generator=g)),
    }


def _config(act_fn: str, *, sidn: bool, norm: str, hook_in: str, hook_out: str, **extra: object) -> dict:
    return {"sae_type": "sae", "d_model": D, "expansion_factor": float(EF), "use_decoder_bias": True, "act_fn": act_fn,
            "norm_activation": norm, "sparsity_include_decoder_norm": sidn, "top_k": TOP_K,
            "use_triton_kernel": False, "sparsity_threshold_for_triton_spmm_kernel": 0.996,
            "jumprelu_threshold_window": 2.0, "hook_point_in": hook_in, "hook_point_out": hook_out,
            "use_glu_encoder": False, **extra}


HOOK = "blocks.3.hook_resid_post"
HOOK_TC_IN, HOOK_TC_OUT = "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"


def write_era_bc(folder: Path, era: str, act_fn: str = "jumprelu", *, sidn: bool = True, norm: str = "dataset-wise",
                 transcoder: bool = False, pre_bias: bool = False, dtype: torch.dtype = torch.float32,
                 seed: int = 0, norms_in_config: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint as era B0/B1/B2/C wrote it; returns the library-named tensors (in ``dtype``)."""
    p = _params(seed)
    hook_in, hook_out = (HOOK_TC_IN, HOOK_TC_OUT) if transcoder else (HOOK, HOOK)
    extra: dict = {}
    if pre_bias:
        extra["apply_decoder_bias_to_pre_encoder"] = True
    if era == "C":
        sd = {"W_E": p["W_E"], "b_E": p["b_E"], "W_D": p["W_D"], "b_D": p["b_D"]}
        if act_fn == "jumprelu":
            sd["activation_function.log_jumprelu_threshold"] = p["log_thr"]
    else:
        sd = {"encoder.weight": p["W_E"].T.contiguous(), "encoder.bias": p["b_E"],
              "decoder.weight": p["W_D"].T.contiguous(), "decoder.bias": p["b_D"]}
        if act_fn == "jumprelu":
            if era == "B1":
                sd["log_jumprelu_threshold"] = p["log_thr"]
            elif era == "B2":
                sd["activation_function.log_jumprelu_threshold"] = p["log_thr"]
            else:  # B0: scalar threshold in the config
                extra["jump_relu_threshold"] = 0.4
    sd = {k: v.to(dtype) for k, v in sd.items()}
    norms = {hook_in: NORM_IN, hook_out: NORM_OUT if transcoder else NORM_IN}
    if norm == "dataset-wise" and not norms_in_config:
        for h, v in norms.items():
            sd[f"dataset_average_activation_norm.{h}"] = torch.tensor(v, dtype=dtype)
    elif norm == "dataset-wise":
        extra["dataset_average_activation_norm"] = norms
    else:
        for h in {hook_in, hook_out}:
            sd[f"dataset_average_activation_norm.{h}"] = torch.empty((), dtype=dtype).fill_(float("nan"))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "sae_weights.safetensors"), {"version": "test"})
    (folder / "config.json").write_text(json.dumps(_config(act_fn, sidn=sidn, norm=norm, hook_in=hook_in,
                                                           hook_out=hook_out, **extra)))
    return sd


def _factor(x: torch.Tensor, norm: str, avg: float) -> torch.Tensor:
    """compute_norm_factor: dataset-wise uses a float32 tensor of sqrt(d)/avg; token-wise sqrt(d)/||x||."""
    if norm == "dataset-wise":
        return torch.tensor(math.sqrt(D) / avg, dtype=torch.float32)
    if norm == "token-wise":
        return math.sqrt(D) / torch.norm(x, 2, dim=-1, keepdim=True)
    return torch.tensor(1.0)


def ref_era_c(sd: dict[str, torch.Tensor], cfg: dict, x: torch.Tensor, *, fold: bool = False, pre_bias: bool = False,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """llamascopium era C: caller normalises, encode = act(z*n)/n, decode = f@W_D + b_D, caller denormalises.

    Returns (codes, recon, decision margin = |gate score - boundary| / max |gate score|).
    """
    w = {k: v.float() for k, v in sd.items()}
    W_E, b_E, W_D, b_D = w["W_E"], w["b_E"], w["W_D"], w["b_D"]
    norm = cfg["norm_activation"]
    n_in = w.get(f"dataset_average_activation_norm.{cfg['hook_point_in']}", torch.tensor(NORM_IN)).item()
    n_out = w.get(f"dataset_average_activation_norm.{cfg['hook_point_out']}", torch.tensor(NORM_IN)).item()
    if fold:  # standardize_parameters_of_dataset_norm (threshold untouched)
        s_in, s_out = math.sqrt(D) / n_in, math.sqrt(D) / n_out
        b_E, b_D, W_D = b_E / s_in, b_D / s_out, W_D * (s_in / s_out)
        f_in = f_out = torch.tensor(1.0)
    else:
        f_in, f_out = _factor(x, norm, n_in), _factor(x, norm, n_out)
    xn = x * f_in
    if pre_bias:
        xn = xn - b_D
    z = xn @ W_E + b_E
    n = W_D.norm(dim=1)
    h = z * n if cfg["sparsity_include_decoder_norm"] else z
    act = cfg["act_fn"]
    if act == "relu":
        a, margin = h * h.gt(0), torch.full_like(h, float("inf"))
    elif act == "jumprelu":
        theta = w["activation_function.log_jumprelu_threshold"].exp()
        a = h * h.gt(theta)
        margin = (h - theta).abs() / h.abs().max()
    else:
        r = h * h.gt(0)
        vals, idx = r.topk(TOP_K + 1, dim=-1)
        a = torch.zeros_like(r).scatter(-1, idx[:, :TOP_K], vals[:, :TOP_K])
        margin = ((vals[:, TOP_K - 1] - vals[:, TOP_K]) / r.max())[:, None].expand_as(r)
    f = a / n if cfg["sparsity_include_decoder_norm"] else a
    return f, (f @ W_D + b_D) / f_out, margin


def ref_era_b(sd: dict[str, torch.Tensor], cfg: dict, x: torch.Tensor, *, pre_bias: bool = False,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lm-saes era B (2025-01 .. 2025-06): mask = act(z * ||decoder col||), f = z * mask, decode in normed space."""
    w = {k: v.float() for k, v in sd.items()}
    E, be, Dw, bd = w["encoder.weight"], w["encoder.bias"], w["decoder.weight"], w["decoder.bias"]
    norm = cfg["norm_activation"]
    n_in = w.get(f"dataset_average_activation_norm.{cfg['hook_point_in']}", torch.tensor(NORM_IN)).item()
    n_out = w.get(f"dataset_average_activation_norm.{cfg['hook_point_out']}", torch.tensor(NORM_IN)).item()
    xn = x * _factor(x, norm, n_in)
    if pre_bias:
        xn = xn - bd
    z = xn @ E.T + be
    n = torch.norm(Dw, p=2, dim=0)
    score = z * n if cfg["sparsity_include_decoder_norm"] else z
    act = cfg["act_fn"]
    margin = torch.full_like(z, float("inf"))
    if act == "relu":
        mask = torch.where(score > 0, 1, 0)
    elif act == "jumprelu":
        if "log_jumprelu_threshold" in w:
            theta = w["log_jumprelu_threshold"].exp()
        elif "activation_function.log_jumprelu_threshold" in w:
            theta = w["activation_function.log_jumprelu_threshold"].exp()
        else:
            theta = torch.tensor(cfg["jump_relu_threshold"])
        mask = torch.where(score > theta, 1, 0)
        margin = (score - theta).abs() / score.abs().max()
    else:
        c = torch.clamp(score, min=0.0)
        kth, _ = torch.kthvalue(c, k=c.shape[-1] - TOP_K + 1, dim=-1)
        mask = torch.where(c >= kth[:, None], 1, 0)
        srt = c.sort(dim=-1, descending=True).values
        margin = ((srt[:, TOP_K - 1] - srt[:, TOP_K]) / c.max())[:, None].expand_as(c)
    f = z * mask
    return f, (f @ Dw.T + bd) / _factor(x, norm, n_out), margin


ERA_C_VARIANTS = [
    # (act_fn, sidn, norm, transcoder, pre_bias)
    ("relu", True, "dataset-wise", False, False),
    ("relu", False, "inference", False, False),
    ("jumprelu", True, "dataset-wise", False, False),
    ("jumprelu", False, "dataset-wise", False, False),
    ("jumprelu", True, "dataset-wise", True, False),   # transcoder: s_in != s_out
    ("jumprelu", True, "dataset-wise", False, True),   # apply_decoder_bias_to_pre_encoder
    ("jumprelu", True, "dataset-wise", True, True),    # ...on a transcoder (folded into b_enc)
    ("jumprelu", True, "token-wise", False, False),
    ("relu", False, "token-wise", False, True),
    ("topk", False, "dataset-wise", False, False),
    ("topk", False, "dataset-wise", True, False),
    ("topk", True, "dataset-wise", False, False),
    ("topk", True, "token-wise", False, False),
    ("topk", True, "inference", True, False),
]


def _variant_id(v: tuple) -> str:
    act, sidn, norm, tc, pb = v
    return f"{act}-{'sidn' if sidn else 'nosidn'}-{norm}{'-tc' if tc else ''}{'-prebias' if pb else ''}"


def _check(sae: SAE, x: torch.Tensor, f_ref: torch.Tensor, r_ref: torch.Tensor) -> None:
    codes, recon = _run(sae, x)
    assert (f_ref != 0).any() and (f_ref == 0).any()
    assert torch.equal(codes != 0, f_ref != 0)
    torch.testing.assert_close(codes, f_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(recon, r_ref, atol=ATOL, rtol=RTOL)
    MAX_ERR["codes"] = max(MAX_ERR["codes"], (codes - f_ref).abs().max().item())
    MAX_ERR["recon"] = max(MAX_ERR["recon"], (recon - r_ref).abs().max().item())


MAX_ERR = {"codes": 0.0, "recon": 0.0}  # worst float32 error over the generated cases (printed with -s)


@pytest.mark.parametrize("variant", ERA_C_VARIANTS, ids=_variant_id)
def test_era_c_variants_against_the_library_formulas(tmp_path, variant):
    act, sidn, norm, tc, pb = variant
    sd = write_era_bc(tmp_path / "c", "C", act, sidn=sidn, norm=norm, transcoder=tc, pre_bias=pb,
                      seed=len(tmp_path.name))
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert detect_format(tmp_path / "c") == "lm-saes"
    sae = SAE.load_from_disk(tmp_path / "c")
    x = _x()
    f_ref, r_ref, _ = ref_era_c(sd, cfg, x, pre_bias=pb)
    _check(sae, x, f_ref, r_ref)
    c = sae.cfg
    assert c.hook_name == cfg["hook_point_in"]
    assert c.is_transcoder == tc and (c.hook_name_out == (HOOK_TC_OUT if tc else None))
    assert c.normalize_activations == {"dataset-wise": "expected_average_only_in",
                                       "token-wise": "constant_norm_rescale", "inference": "none"}[norm]
    if norm == "dataset-wise":
        assert c.norm_scaling_factor == pytest.approx(math.sqrt(D) / NORM_IN)
        assert c.norm_scaling_factor_out == pytest.approx(math.sqrt(D) / (NORM_OUT if tc else NORM_IN))
    if pb:
        assert c.apply_b_dec_to_input == (not tc)
    assert c.extra["lm_saes"]["era"] == "C"


@_FOLD_WARNING
@pytest.mark.parametrize("variant", [v for v in ERA_C_VARIANTS if v[2] == "dataset-wise"], ids=_variant_id)
def test_era_c_fold_activation_scale_against_the_library_fold(tmp_path, variant):
    act, sidn, norm, tc, pb = variant
    sd = write_era_bc(tmp_path / "c", "C", act, sidn=sidn, norm=norm, transcoder=tc, pre_bias=pb, seed=3)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    sae = SAE.load_from_disk(tmp_path / "c", fold_activation_scale=True)
    assert sae.cfg.normalize_activations == "none" and sae.cfg.norm_scaling_factor is None
    x = _x()
    f_ref, r_ref, _ = ref_era_c(sd, cfg, x, fold=True, pre_bias=pb)
    _check(sae, x, f_ref, r_ref)


ERA_B_VARIANTS = [
    ("jumprelu", True, "dataset-wise", False, False),
    ("jumprelu", False, "dataset-wise", False, True),
    ("jumprelu", True, "dataset-wise", True, False),
    ("jumprelu", True, "token-wise", False, False),
    ("relu", True, "inference", False, True),
    ("topk", False, "dataset-wise", False, False),
    ("topk", True, "dataset-wise", True, False),
]


# B0 (scalar threshold in config.json), B1 (top-level log_jumprelu_threshold) and B2 (activation_function.*) differ
# only in where the JumpReLU threshold lives, so relu/topk run once (as "B1": same files in every B era).
@pytest.mark.parametrize(("era", "variant"), [
    pytest.param(era, v, id=f"{era}-{_variant_id(v)}")
    for v in ERA_B_VARIANTS for era in (("B0", "B1", "B2") if v[0] == "jumprelu" else ("B1",))])
def test_era_b_against_the_library_formulas(tmp_path, era, variant):
    act, sidn, norm, tc, pb = variant
    sd = write_era_bc(tmp_path / "b", era, act, sidn=sidn, norm=norm, transcoder=tc, pre_bias=pb, seed=5)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert detect_format(tmp_path / "b") == "lm-saes"
    sae = SAE.load_from_disk(tmp_path / "b")
    x = _x()
    f_ref, r_ref, _ = ref_era_b(sd, cfg, x, pre_bias=pb)
    _check(sae, x, f_ref, r_ref)
    assert sae.cfg.extra["lm_saes"]["era"] == (era if act == "jumprelu" else "B")


def test_era_b_norms_from_the_config_json(tmp_path):
    sd = write_era_bc(tmp_path / "b", "B1", "jumprelu", norms_in_config=True, transcoder=True)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    sae = SAE.load_from_disk(tmp_path / "b")
    f_ref, r_ref, _ = ref_era_b({**sd, **{f"dataset_average_activation_norm.{h}": torch.tensor(v)
                                         for h, v in cfg["dataset_average_activation_norm"].items()}}, cfg, _x())
    _check(sae, _x(), f_ref, r_ref)


@pytest.mark.parametrize(("era", "act", "sidn"), [
    ("C", "jumprelu", True), ("C", "topk", False), ("B1", "jumprelu", True), ("C", "relu", True)])
def test_bf16_weights(tmp_path, era, act, sidn):
    sd = write_era_bc(tmp_path / "bf", era, act, sidn=sidn, dtype=torch.bfloat16, seed=7)
    cfg = json.loads((tmp_path / "bf" / "config.json").read_text())
    sae = SAE.load_from_disk(tmp_path / "bf")
    assert sae.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16"
    x = _x(64)
    f_ref, r_ref, margin = (ref_era_c if era == "C" else ref_era_b)(sd, cfg, x)
    _check_bf16(sae, x, f_ref, r_ref, margin)


# ---------------------------------------------------------------------------------- era A


def write_era_a(folder: Path, act_fn: str = "jumprelu", *, sidn: bool = True, norm: str = "dataset-wise",
                transcoder: bool = False, pre_bias: bool = False, jt: float = 0.35, mask_scale: bool = False,
                dtype: torch.dtype = torch.float32, weights_name: str = "checkpoints/final.safetensors",
                seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    p = _params(seed)
    g = torch.Generator().manual_seed(seed + 100)
    sd = {"encoder.weight": p["W_E"].T.contiguous(), "encoder.bias": p["b_E"],
          "decoder.weight": p["W_D"].T.contiguous(), "decoder.bias": p["b_D"]}
    if mask_scale:
        sd["feature_act_mask"] = (torch.rand(S, generator=g) > 0.2).float()
        sd["feature_act_scale"] = 0.5 + torch.rand(S, generator=g)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    hook_in, hook_out = (HOOK_TC_IN, HOOK_TC_OUT) if transcoder else (HOOK, HOOK)
    hp = {"d_model": D, "d_sae": S, "expansion_factor": EF, "use_decoder_bias": True,
          "apply_decoder_bias_to_pre_encoder": pre_bias, "act_fn": act_fn, "jump_relu_threshold": jt,
          "norm_activation": norm, "sparsity_include_decoder_norm": sidn, "top_k": TOP_K,
          "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_OUT if transcoder else NORM_IN},
          "hook_point_in": hook_in, "hook_point_out": hook_out}
    (folder / Path(weights_name).parent).mkdir(parents=True, exist_ok=True)
    if weights_name.endswith(".pt"):
        torch.save({"sae": sd, "version": "0.1"}, folder / weights_name)
    else:
        save_file(sd, str(folder / weights_name))
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    (folder / "lm_config.json").write_text(json.dumps({"model_name": "meta-llama/Llama-3.1-8B"}))
    return sd, hp


def ref_era_a(sd: dict[str, torch.Tensor], hp: dict, x: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Llama Scope era (1e710367): from_pretrained folds the dataset norm, unit-norms decoder columns; encode raw."""
    w = {k: v.float() for k, v in sd.items()}
    E, be, Dw, bd = w["encoder.weight"], w["encoder.bias"], w["decoder.weight"], w["decoder.bias"]
    if hp["norm_activation"] == "dataset-wise":  # 1. standardize_parameters_of_dataset_activation_scaling
        s_in = math.sqrt(D) / hp["dataset_average_activation_norm"]["in"]
        s_out = math.sqrt(D) / hp["dataset_average_activation_norm"]["out"]
        be, bd, Dw = be / s_in, bd / s_out, Dw * s_in / s_out
    if hp["sparsity_include_decoder_norm"]:  # 2. transform_to_unit_decoder_norm
        n = torch.norm(Dw, p=2, dim=0)
        E, be, Dw = E * n[:, None], be * n, Dw / n
    act = hp["act_fn"]
    if act == "topk" and hp["jump_relu_threshold"] > 0:  # 3. topk -> jumprelu for inference
        act = "jumprelu"
    xi = x - bd if hp["apply_decoder_bias_to_pre_encoder"] else x
    z = xi @ E.T + be
    margin = torch.full_like(z, float("inf"))
    if act == "jumprelu":
        jt = hp["jump_relu_threshold"]
        f = z.where(z > jt, 0)
        margin = (z - jt).abs() / z.abs().max()
    elif act == "topk":
        r = torch.clamp(z, min=0.0)
        score = r * torch.norm(Dw, p=2, dim=0) if hp["sparsity_include_decoder_norm"] else r
        idx = torch.topk(score, k=TOP_K, dim=-1).indices
        f = torch.zeros_like(r).scatter(-1, idx, r.gather(-1, idx))
    else:
        f = torch.clamp(z, min=0.0)
    if "feature_act_mask" in w:
        f = w["feature_act_mask"] * w["feature_act_scale"] * f
    return f, f @ Dw.T + bd, margin


@pytest.mark.parametrize(("act", "kw"), [
    ("jumprelu", {}),
    ("jumprelu", {"sidn": False}),
    ("jumprelu", {"transcoder": True}),
    ("jumprelu", {"pre_bias": True}),
    ("jumprelu", {"pre_bias": True, "transcoder": True}),
    ("topk", {"jt": 0.35}),             # becomes jumprelu, as the library does
    ("topk", {"jt": 0.0}),
    ("topk", {"jt": 0.0, "sidn": False}),
    ("relu", {"mask_scale": True}),
    ("jumprelu", {"mask_scale": True}),
    ("relu", {"norm": "inference", "weights_name": "checkpoints/final.pt"}),
    ("jumprelu", {"weights_name": "sae_weights.safetensors"}),
    ("relu", {"weights_name": "checkpoints/pruned.safetensors", "norm": "token-wise"}),
])
def test_era_a_against_the_library_formulas(tmp_path, act, kw):
    sd, hp = write_era_a(tmp_path / "a", act, **kw)
    assert detect_format(tmp_path / "a") == "lm-saes"
    sae = SAE.load_from_disk(tmp_path / "a")
    x = _x()
    if kw.get("norm") == "token-wise":
        f_ref, r_ref = _ref_token_wise_era_a(sd, hp, x)
    else:
        f_ref, r_ref, _ = ref_era_a(sd, hp, x)
    _check(sae, x, f_ref, r_ref)
    c = sae.cfg
    assert c.extra["lm_saes"]["era"] == "A" and c.model_name == "meta-llama/Llama-3.1-8B"
    assert c.norm_scaling_factor is None  # era A features are raw-scale (folded on load)
    assert c.is_transcoder == bool(kw.get("transcoder"))


def _ref_token_wise_era_a(sd: dict[str, torch.Tensor], hp: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    coeff = math.sqrt(D) / torch.norm(x, 2, dim=-1, keepdim=True)
    f, r, _ = ref_era_a(sd, hp, x * coeff)
    return f, r / coeff


def test_era_a_bf16_like_llama_scope(tmp_path):
    sd, hp = write_era_a(tmp_path / "a", "jumprelu", dtype=torch.bfloat16, jt=0.5)
    sae = SAE.load_from_disk(tmp_path / "a")
    assert sae.dtype == torch.bfloat16
    x = _x(64)
    f_ref, r_ref, margin = ref_era_a(sd, hp, x)
    _check_bf16(sae, x, f_ref, r_ref, margin)


def test_era_a_refuses_fold_false_and_negative_thresholds(tmp_path):
    write_era_a(tmp_path / "a")
    with pytest.raises(ConfigError):
        SAE.load_from_disk(tmp_path / "a", fold_activation_scale=False)
    write_era_a(tmp_path / "n", jt=-0.1)
    with pytest.raises(UnsupportedSAEError, match="negative"):
        SAE.load_from_disk(tmp_path / "n")


# ================================================================================ refusals and bad files


@pytest.mark.parametrize(("sae_type", "word"), [("crosscoder", "crosscoder"), ("clt", "cross-layer"),
                                                ("lorsa", "attention"), ("molt", "linear transforms")])
def test_non_sae_dictionaries_are_refused(tmp_path, sae_type, word):
    write_era_bc(tmp_path / "x", "C")
    cfg = json.loads((tmp_path / "x" / "config.json").read_text())
    (tmp_path / "x" / "config.json").write_text(json.dumps({**cfg, "sae_type": sae_type}))
    with pytest.raises(UnsupportedSAEError, match=word):
        SAE.load_from_disk(tmp_path / "x")


def test_glu_encoders_are_refused(tmp_path):
    write_era_bc(tmp_path / "g", "C")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**cfg, "use_glu_encoder": True}))
    with pytest.raises(UnsupportedSAEError, match="GLU"):
        SAE.load_from_disk(tmp_path / "g")
    sd = write_era_bc(tmp_path / "k", "C")
    save_file({**sd, "W_E_glu": torch.zeros(D, S), "b_E_glu": torch.zeros(S)},
              str(tmp_path / "k" / "sae_weights.safetensors"))
    with pytest.raises(UnsupportedSAEError, match="GLU"):
        SAE.load_from_disk(tmp_path / "k")
    sd, _ = write_era_a(tmp_path / "a")
    save_file({**sd, "encoder_glu.weight": torch.zeros(S, D)}, str(tmp_path / "a" / "checkpoints/final.safetensors"))
    with pytest.raises(UnsupportedSAEError, match="GLU"):
        SAE.load_from_disk(tmp_path / "a")


def test_batch_wise_norm_and_token_wise_transcoders_are_refused(tmp_path):
    write_era_bc(tmp_path / "bw", "C", norm="batch-wise")
    with pytest.raises(UnsupportedSAEError, match="batch"):
        SAE.load_from_disk(tmp_path / "bw")
    write_era_bc(tmp_path / "tw", "C", norm="token-wise", transcoder=True)
    with pytest.raises(UnsupportedSAEError, match="target"):
        SAE.load_from_disk(tmp_path / "tw")
    write_era_bc(tmp_path / "tf", "C", norm="token-wise")
    with pytest.raises(ConfigError, match="fold"):
        SAE.load_from_disk(tmp_path / "tf", fold_activation_scale=True)


def test_clt_only_activations_and_dcp_are_refused(tmp_path):
    write_era_bc(tmp_path / "l", "C", "relu")
    cfg = json.loads((tmp_path / "l" / "config.json").read_text())
    (tmp_path / "l" / "config.json").write_text(json.dumps({**cfg, "act_fn": "layertopk"}))
    with pytest.raises(UnsupportedSAEError):
        SAE.load_from_disk(tmp_path / "l")
    d = tmp_path / "dcp"
    (d / "sae_weights.dcp").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    assert detect_format(d) == "lm-saes"
    with pytest.raises(UnsupportedSAEError, match="distributed"):
        SAE.load_from_disk(d)


def test_garbage_dataset_norm_is_a_config_error_and_can_be_supplied(tmp_path):
    sd = write_era_bc(tmp_path / "g", "C", "relu")
    sd[f"dataset_average_activation_norm.{HOOK}"] = torch.tensor(-3.0e-37)
    save_file(sd, str(tmp_path / "g" / "sae_weights.safetensors"))
    with pytest.raises(ConfigError, match="uninitialised"):
        SAE.load_from_disk(tmp_path / "g")
    sae = SAE.load_from_disk(tmp_path / "g", dataset_average_activation_norm={HOOK: NORM_IN})
    assert sae.cfg.norm_scaling_factor == pytest.approx(math.sqrt(D) / NORM_IN)
    del sd[f"dataset_average_activation_norm.{HOOK}"]
    save_file(sd, str(tmp_path / "g" / "sae_weights.safetensors"))
    with pytest.raises(ConfigError, match="no dataset_average_activation_norm"):
        SAE.load_from_disk(tmp_path / "g")


def test_truncated_weights_are_a_corrupt_file_error(tmp_path):
    write_era_bc(tmp_path / "t", "C")
    p = tmp_path / "t" / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        SAE.load_from_disk(tmp_path / "t")


@pytest.mark.parametrize("field", ["d_model", "hook_point_in", "expansion_factor"])
def test_config_missing_fields_are_config_errors(tmp_path, field):
    write_era_bc(tmp_path / "m", "C")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg[field]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(tmp_path / "m", format="lm-saes")
    assert e.value.field == field


def test_bad_json_shapes_and_missing_files(tmp_path):
    write_era_bc(tmp_path / "j", "C")
    (tmp_path / "j" / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path / "j", format="lm-saes")
    sd = write_era_bc(tmp_path / "s", "C")
    save_file({**sd, "W_E": torch.zeros(D, S + 1)}, str(tmp_path / "s" / "sae_weights.safetensors"))
    with pytest.raises(ShapeMismatchError, match="W_E"):
        SAE.load_from_disk(tmp_path / "s")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text(json.dumps(_config("relu", sidn=True, norm="inference",
                                                                   hook_in=HOOK, hook_out=HOOK)))
    with pytest.raises(FormatDetectionError):
        SAE.load_from_disk(tmp_path / "e")
    with pytest.raises(MissingFileError):
        SAE.load_from_disk(tmp_path / "e", format="lm-saes")
    write_era_a(tmp_path / "p", weights_name="checkpoints/final.pt")
    (tmp_path / "p" / "checkpoints" / "final.pt").write_bytes(b"not a zip file")
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path / "p")


def test_unknown_options_are_rejected():
    with pytest.raises(ConfigError, match="does not take"):
        SAE.load_from_disk(FIXTURES / "relu_inference_no_norm", top_k=3)


def test_detect_is_unambiguous_against_other_formats(tmp_path):
    from sae_hub.loaders import lm_saes

    saelens = Path(__file__).parent / "fixtures" / "sae_lens" / "standard"
    assert not lm_saes.detect(saelens)
    # SAELens folder layout (cfg.json) is not claimed even when a config.json with other content is present
    (tmp_path / "gs2").mkdir()
    (tmp_path / "gs2" / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.1.output"}))
    save_file({"w_enc": torch.zeros(2, 3)}, str(tmp_path / "gs2" / "params.safetensors"))
    assert not lm_saes.detect(tmp_path / "gs2")
    write_era_bc(tmp_path / "c", "C")
    assert detect_format(tmp_path / "c") == "lm-saes"
    assert not lm_saes.detect(tmp_path / "c" / "sae_weights.safetensors")


def test_provenance_records_the_conversion(tmp_path):
    write_era_bc(tmp_path / "c", "C", "jumprelu", transcoder=True)
    sae = SAE.load_from_disk(tmp_path / "c")
    conv = " | ".join(sae.cfg.provenance.conversions)
    assert "era C" in conv and "norm_scaling_factor" in conv and "/ ||W_D_j||" in conv
    names = {f["name"] for f in sae.cfg.provenance.source_files}
    assert names == {"config.json", "sae_weights.safetensors"}


def test_errors_are_sae_hub_errors():
    assert issubclass(UnsupportedSAEError, SaeHubError) and issubclass(ShapeMismatchError, ConfigError)
