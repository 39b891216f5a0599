"""Temporal SAEs (sae_hub/temporal.py, loaders/temporal.py) against independent references.

* ``tests/fixtures/temporal/<case>``: folders written by the authors' own ``TemporalSAE`` (github.com/eslubana/
  temporalSAEs, see ``make_fixture.py``) with its outputs on reference inputs; sae-hub loads them with no format
  hint and must reproduce them (<= 1e-5 in float32).
* A generated checkpoint (other shapes: 3 heads, 2 attention layers, untied) against :func:`formula`, a float64
  transcription of the paper's computation written here with explicit per-position softmax loops (no SDPA), on the
  checkpoint's ORIGINAL tensor names, so the loader's renaming is checked too.
* Typed errors naming conf.yaml / the checkpoint and the field or tensor; the Hub path through the local test Hub
  for SAELens's ``temporal-sae-gemma-2-2b`` release; the hook function on a real TransformerLens model.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import sae_hub
from sae_hub import SAE, TemporalSAE
from sae_hub.errors import ConfigError, ShapeMismatchError, UnknownArchitectureError, UnsupportedSAEError
from sae_hub.loading import detect_format

FIX = Path(__file__).parent / "fixtures" / "temporal"
CASES = ["topk", "relu_untied_2layers", "batchtopk_inference"]


# ------------------------------------------------------------------------------------------ the float64 formula


def formula(sd: dict[str, torch.Tensor], sae: dict[str, Any], d_in: int, x: torch.Tensor, *, k: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(novel, pred, recon) in float64 from the checkpoint's own tensors (``D``, ``b``, ``E``, ``attn_layers.*``)
    and ``conf.yaml``'s ``sae`` section, for x [B, L, d_in] model activations. Written from the paper's description
    (arXiv 2511.01836) and the authors' code, independently of sae_hub.temporal."""
    t = {key: v.double() for key, v in sd.items()}
    D, b = t["D"], t["b"].reshape(-1)
    E = D.T if sae["tied_weights"] else t["E"]
    lam, eps, s = 1.0 / (4 * d_in), 1e-6, sae["scaling_factor"]
    H = sae["n_heads"]
    r = x.double() * s - b
    B, L, _ = r.shape
    pred = torch.zeros(B, L, D.shape[0], dtype=torch.float64)
    for i in range(sae["n_attn_layers"]):
        a = f"attn_layers.{i}."
        u = torch.relu((r * lam) @ E)
        ctx = torch.zeros_like(u)
        ctx[:, 1:] = u[:, :-1]
        q = u @ t[a + "q_target.weight"].T + t[a + "q_target.bias"]
        kk = ctx @ t[a + "k_ctx.weight"].T + t[a + "k_ctx.bias"]
        v = ctx @ t[a + "v_ctx.weight"].T + t[a + "v_ctx.bias"]
        dq, dv = q.shape[-1] // H, v.shape[-1] // H
        att = torch.zeros_like(v)
        for bi in range(B):
            for h in range(H):
                for pos in range(L):
                    qh = q[bi, pos, h * dq:(h + 1) * dq]
                    scores = torch.stack([qh @ kk[bi, j, h * dq:(h + 1) * dq] / math.sqrt(dq) for j in range(pos + 1)])
                    w = torch.exp(scores - scores.max())
                    w = w / w.sum()
                    vs = v[bi, : pos + 1, h * dv:(h + 1) * dv]
                    att[bi, pos, h * dv:(h + 1) * dv] = sum(w[j] * vs[j] for j in range(pos + 1))
        p = torch.relu(att @ t[a + "c_proj.weight"].T + t[a + "c_proj.bias"])
        Dp = p @ D
        g = (Dp * r).sum(-1, keepdim=True) / (Dp.norm(dim=-1, keepdim=True) + eps) ** 2
        pred = pred + g * p
        r = r - g * Dp
    f = torch.relu((r * lam) @ E)
    diff = sae["sae_diff_type"]
    if diff == "topk":
        kv = k or sae["kval_topk"]
        keep = torch.zeros_like(f, dtype=torch.bool).scatter_(-1, f.topk(kv, dim=-1).indices, True)
        f = f * keep
    elif diff == "batchtopk":
        f = f * (f > t["expected_min_act"][0])
    elif diff == "nullify":
        f = torch.zeros_like(f)
    recon = ((f + pred) @ D + b) / s
    return f, pred, recon


def _copy(case: str, tmp_path: Path) -> Path:
    dst = tmp_path / case
    shutil.copytree(FIX / case, dst)
    (dst / "reference.safetensors").unlink()
    return dst


def _conf(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "conf.yaml").read_text())


def _write_conf(folder: Path, conf: dict[str, Any]) -> None:
    (folder / "conf.yaml").write_text(yaml.safe_dump(conf))


# ------------------------------------------------------------------------------- the authors' code's own outputs


@pytest.mark.parametrize("case", CASES)
def test_reproduces_the_authors_code(case: str):
    folder = FIX / case
    assert detect_format(folder) == "temporal-sae"
    sae = TemporalSAE.load_from_disk(folder)  # no format hint
    ref = load_file(folder / "reference.safetensors")
    s = sae.cfg.scaling_factor
    novel, pred = sae.encode(ref["x"])
    recon = sae(ref["x"])
    assert recon.shape == ref["x"].shape and novel.dtype == torch.float32
    assert (novel - ref["novel_codes"]).abs().max() <= 1e-5
    assert (pred - ref["pred_codes"]).abs().max() <= 1e-5
    assert (recon * s - ref["recons"]).abs().max() <= 1e-5  # the original reconstructs x * scaling_factor
    assert (sae.decode(novel) * s - ref["novel_recons"] - sae.param("b_dec")).abs().max() <= 1e-5
    # the attention part matters in these fixtures: predicted codes are far from zero and change the output
    assert ref["pred_codes"].abs().max() > 0.05 and (ref["pred_recons"].norm(dim=-1) > 1e-3).float().mean() > 0.5
    if case == "topk":
        assert ((novel != 0).sum(-1) <= sae.cfg.k).all() and ((novel != 0).sum(-1) == sae.cfg.k).float().mean() > 0.9
    sae64 = TemporalSAE.load_from_disk(folder, dtype="float64")
    n64, p64 = sae64.encode(ref["x"].double())
    assert (n64 - ref["novel_codes_f64"]).abs().max() <= 1e-10
    assert (p64 - ref["pred_codes_f64"]).abs().max() <= 1e-10
    assert (sae64(ref["x"].double()) * s - ref["recons_f64"]).abs().max() <= 1e-10


@pytest.mark.parametrize("case", CASES)
def test_fixture_against_the_float64_formula(case: str):
    folder = FIX / case
    conf = _conf(folder)
    ref = load_file(folder / "reference.safetensors")
    f, p, r = formula(load_file(folder / "latest_ckpt.safetensors"), conf["sae"], conf["llm"]["dimin"], ref["x"])
    # the formula is independent of both the authors' code and sae-hub: it agrees with the former ...
    assert (f - ref["novel_codes_f64"]).abs().max() <= 1e-10
    assert (r * conf["sae"]["scaling_factor"] - ref["recons_f64"]).abs().max() <= 1e-10
    # ... and with sae-hub in float64
    sae = TemporalSAE.load_from_disk(folder, dtype=torch.float64)
    assert (sae.encode(ref["x"]).pred - p).abs().max() <= 1e-10


# --------------------------------------------------------------------------------------------- generated cases


def _generated(tmp_path: Path, *, n_heads: int = 3, n_layers: int = 2, tied: bool = False, diff: str = "topk",
               k: int | None = 5, d_in: int = 12, exp: int = 4, bf: int = 2, scale: float = 0.3,
               seed: int = 0) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint in the original file layout with random weights, written here (not by the real code)."""
    g = torch.Generator().manual_seed(seed)
    n, a = d_in * exp, d_in * exp // bf
    sd: dict[str, torch.Tensor] = {"D": torch.randn(n, d_in, generator=g), "b": 0.3 * torch.randn(1, d_in, generator=g)}
    if not tied:
        sd["E"] = torch.randn(d_in, n, generator=g)
    if diff == "batchtopk":
        sd["expected_min_act"] = torch.tensor([0.1])
    for i in range(n_layers):
        for name, width in (("q_target", a), ("k_ctx", a), ("v_ctx", n), ("c_proj", n)):
            sd[f"attn_layers.{i}.{name}.weight"] = torch.randn(width, n, generator=g) / math.sqrt(n)
            sd[f"attn_layers.{i}.{name}.bias"] = 0.1 * torch.randn(width, generator=g)
    sae = {"sae_type": "temporal", "sae_diff_type": diff, "kval_topk": k, "tied_weights": tied, "n_heads": n_heads,
           "n_attn_layers": n_layers, "bottleneck_factor": bf, "exp_factor": exp, "scaling_factor": scale,
           "inference_mode_batchtopk": diff == "batchtopk"}
    folder = tmp_path / "gemma-2-2B" / "layer_7" / "temporal"
    folder.mkdir(parents=True)
    _write_conf(folder, {"llm": {"dimin": d_in, "model_hf_name": "google/gemma-2-2b"}, "sae": sae,
                         "data": {"dtype": "bfloat16"}})
    save_file(sd, folder / "latest_ckpt.safetensors")
    return folder, sd, sae


@pytest.mark.parametrize(("diff", "tied", "k"), [("topk", False, 5), ("relu", True, None), ("batchtopk", True, 3),
                                                 ("nullify", False, None)])
def test_generated_against_the_formula(tmp_path: Path, diff: str, tied: bool, k: int | None):
    folder, sd, conf = _generated(tmp_path, diff=diff, tied=tied, k=k)
    sae = TemporalSAE.load_from_disk(folder)
    assert sae.cfg.hook_name == "blocks.7.hook_resid_post" and sae.cfg.model_name == "google/gemma-2-2b"
    assert sae.cfg.extra["training_autocast_dtype"] == "bfloat16" and sae.cfg.d_sae == 48
    x = 2.0 * torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(1))
    f, p, r = formula(sd, conf, 12, x)
    novel, pred = sae.encode(x)
    assert (novel.double() - f).abs().max() <= 1e-5
    assert (pred.double() - p).abs().max() <= 1e-5
    assert (sae(x).double() - r).abs().max() <= 1e-5 * max(1.0, r.abs().max().item())
    if diff != "nullify":
        assert p.abs().max() > 1e-3 and f.abs().max() > 1e-3  # both parts are exercised
    # one [seq, d_in] sequence is a batch of one
    torch.testing.assert_close(sae(x[1]), sae(x)[1], atol=1e-6, rtol=1e-6)


def test_topk_override_and_causality(tmp_path: Path):
    folder, sd, conf = _generated(tmp_path, n_heads=2, n_layers=1, bf=1, seed=3)
    sae = TemporalSAE.load_from_disk(folder)
    x = torch.randn(1, 7, 12, generator=torch.Generator().manual_seed(2))
    f2, _, _ = formula(sd, conf, 12, x, k=2)
    got = sae.encode(x, k=2).novel
    assert ((got != 0).sum(-1) <= 2).all() and (got.double() - f2).abs().max() <= 1e-5
    # position t is coded from positions <= t only: changing the last position changes nothing before it
    y = x.clone()
    y[:, -1] += 5.0
    a, b = sae.encode(x), sae.encode(y)
    torch.testing.assert_close(a.novel[:, :-1], b.novel[:, :-1], atol=0, rtol=0)
    torch.testing.assert_close(a.pred[:, :-1], b.pred[:, :-1], atol=0, rtol=0)
    # ... but a change at position 0 reaches later positions' predicted codes (it is their context)
    z = x.clone()
    z[:, 0] += 5.0
    assert (sae.encode(z).pred[:, 1:] - a.pred[:, 1:]).abs().max() > 1e-4
    with pytest.raises(ConfigError) as e:
        TemporalSAE.load_from_disk(_copy("relu_untied_2layers", tmp_path)).encode(torch.zeros(1, 2, 16), k=2)
    assert e.value.field == "k"


def test_bf16_weights_compute_in_float32(tmp_path: Path):
    folder, sd, conf = _generated(tmp_path, diff="relu", k=None)
    sae = TemporalSAE.load_from_disk(folder, dtype="bfloat16")
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(4))
    sd16 = {key: v.to(torch.bfloat16) for key, v in sd.items()}
    f, _, r = formula(sd16, conf, 12, x)  # the formula on the bf16-rounded weights
    novel = sae.encode(x).novel
    assert novel.dtype == torch.bfloat16 and sae(x).dtype == torch.bfloat16
    assert (novel.double() - f).abs().max() <= 0.01 * f.abs().max()
    assert (sae(x).double() - r).abs().max() <= 0.01 * r.abs().max()


# ------------------------------------------------------------------------------------------------------ errors


def test_missing_tensor_names_the_file_and_tensor(tmp_path: Path):
    folder = _copy("relu_untied_2layers", tmp_path)
    sd = load_file(folder / "latest_ckpt.safetensors")
    del sd["attn_layers.1.v_ctx.bias"]
    save_file(sd, folder / "latest_ckpt.safetensors")
    with pytest.raises(ShapeMismatchError, match="attn_layers.1.v_ctx.bias") as e:
        TemporalSAE.load_from_disk(folder)
    assert e.value.field == "attn_layers.1.v_ctx.bias" and str(e.value.path).endswith("latest_ckpt.safetensors")


@pytest.mark.parametrize(("key", "shape"), [("D", (24, 16)), ("attn_layers.0.q_target.weight", (8, 32)),
                                            ("b", (2, 16))])
def test_wrong_shape_names_the_tensor(tmp_path: Path, key: str, shape: tuple[int, ...]):
    folder = _copy("topk", tmp_path)
    sd = load_file(folder / "latest_ckpt.safetensors")
    sd[key] = torch.zeros(shape)
    save_file(sd, folder / "latest_ckpt.safetensors")
    with pytest.raises(ShapeMismatchError, match="needs") as e:
        TemporalSAE.load_from_disk(folder)
    assert e.value.field == key and str(e.value.path).endswith("latest_ckpt.safetensors")


def test_encoder_in_a_tied_checkpoint_is_refused(tmp_path: Path):
    folder = _copy("topk", tmp_path)
    sd = load_file(folder / "latest_ckpt.safetensors")
    sd["E"] = torch.zeros(16, 32)
    save_file(sd, folder / "latest_ckpt.safetensors")
    with pytest.raises(ShapeMismatchError, match="unexpected") as e:
        TemporalSAE.load_from_disk(folder)
    assert e.value.field == "E"


@pytest.mark.parametrize(("section", "name", "value", "error", "field"), [
    ("sae", "scaling_factor", None, ConfigError, "sae.scaling_factor"),
    ("sae", "scaling_factor", -1.0, ConfigError, "sae.scaling_factor"),
    ("sae", "sae_diff_type", "jumprelu", ConfigError, "sae.sae_diff_type"),
    ("sae", "kval_topk", 0, ConfigError, "sae.kval_topk"),
    ("sae", "kval_topk", 1000, ConfigError, "sae.kval_topk"),
    ("sae", "n_heads", 3, ConfigError, "sae.bottleneck_factor"),
    ("sae", "tied_weights", "yes", ConfigError, "sae.tied_weights"),
    ("sae", "sae_type", "relu", ConfigError, "sae.sae_type"),
    ("llm", "dimin", "16", ConfigError, "llm.dimin"),
    ("sae", "exp_factor", True, ConfigError, "sae.exp_factor"),
])
def test_bad_conf_names_the_field(tmp_path: Path, section: str, name: str, value: Any, error: type, field: str):
    folder = _copy("topk", tmp_path)
    conf = _conf(folder)
    if value is None:
        del conf[section][name]
    else:
        conf[section][name] = value
    _write_conf(folder, conf)
    with pytest.raises(error) as e:
        TemporalSAE.load_from_disk(folder)
    assert e.value.field == field and str(e.value.path).endswith("conf.yaml")
    assert not isinstance(e.value, UnknownArchitectureError) or field == "sae.sae_diff_type"


def test_conf_that_is_not_a_mapping(tmp_path: Path):
    folder = _copy("topk", tmp_path)
    (folder / "conf.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError) as e:
        TemporalSAE.load_from_disk(folder)
    assert str(e.value.path).endswith("conf.yaml")
    (folder / "conf.yaml").write_text("llm: {dimin: 16\n")
    with pytest.raises(sae_hub.CorruptFileError):
        TemporalSAE.load_from_disk(folder)


def test_batchtopk_training_mode_is_refused_with_the_reason(tmp_path: Path):
    folder = _copy("batchtopk_inference", tmp_path)
    conf = _conf(folder)
    conf["sae"]["inference_mode_batchtopk"] = False
    _write_conf(folder, conf)
    with pytest.raises(UnsupportedSAEError, match="whole batch") as e:
        TemporalSAE.load_from_disk(folder)
    assert e.value.field == "sae.inference_mode_batchtopk"


def test_bad_inputs_are_typed_errors():
    sae = TemporalSAE.load_from_disk(FIX / "topk")
    for bad in (torch.zeros(16), torch.zeros(2, 3, 15), torch.zeros(1, 2, 3, 16), torch.zeros(2, 0, 16),
                torch.zeros(2, 3, 16, dtype=torch.long)):
        with pytest.raises(ShapeMismatchError) as e:
            sae.encode(bad)
        assert e.value.field == "x"
    with pytest.raises(ShapeMismatchError) as e:
        sae.decode(torch.zeros(2, 3, 32), torch.zeros(2, 4, 32))
    assert e.value.field == "pred"


def test_other_kinds_name_their_class():
    with pytest.raises(UnsupportedSAEError, match=r"sae_hub\.SAE\.load_from_disk"):
        TemporalSAE.load_from_disk(Path(__file__).parent / "fixtures" / "sae_lens" / "topk")
    with pytest.raises(UnsupportedSAEError, match=r"TemporalSAE\.load_from_disk"):
        SAE.load_from_disk(FIX / "topk")


# ------------------------------------------------------------------------------------------------------ the Hub


REL, SID, HUBPATH = "temporal-sae-gemma-2-2b", "blocks.12.hook_resid_post", "gemma-2-2B/layer_12/temporal"


def test_release_through_the_test_hub(hub):
    repo = "canrager/temporalSAEs"  # SAELens 6.54.12's release table entry, shipped in registry/saelens-misc.yaml
    for name in ("conf.yaml", "latest_ckpt.safetensors"):
        hub.add_file(repo, f"{HUBPATH}/{name}", (FIX / "topk" / name).read_bytes())
    hub.add_file(repo, f"{HUBPATH}/reference.safetensors", b"not part of the SAE")
    hub.add_file(repo, "README.md", b"# temporal SAEs\n")
    with pytest.raises(UnsupportedSAEError, match=rf"TemporalSAE\.from_pretrained\('{REL}', '{SID}'\)") as e:
        SAE.from_pretrained(REL, SID)
    assert e.value.field == "format" and hub.requests == []  # refused before any request
    sae = sae_hub.from_pretrained(REL, SID)
    assert isinstance(sae, TemporalSAE)
    gets = hub.find(method="GET", path_contains="/resolve/")
    got = sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in gets)
    assert got == [f"{HUBPATH}/conf.yaml", f"{HUBPATH}/latest_ckpt.safetensors"]
    c = sae.cfg
    assert c.hook_name == SID and c.neuronpedia_id == "gemma-2-2b/12-temporal-res" and c.extra["l0"] == 192
    assert c.extra["release"] == {"name": REL, "sae_id": SID}
    # the fixture was trained (by construction) with scaling 0.5; the table's 0.00667 is recorded, not applied
    assert c.scaling_factor == 0.5 and c.extra["release_norm_scaling_factor"] == pytest.approx(0.00666666667)
    assert c.provenance.source_format == "temporal-sae"
    ref = load_file(FIX / "topk" / "reference.safetensors")
    assert (sae(ref["x"]) * 0.5 - ref["recons"]).abs().max() <= 1e-5
    again = TemporalSAE.from_pretrained(REL, SID, dtype="float64")
    assert again.dtype == torch.float64


# ----------------------------------------------------------------------------------------- on a model's hook


def test_hook_over_whole_sequences_on_a_model(tiny_model: Any, tmp_path: Path):
    model = tiny_model
    d = model.cfg.d_model
    folder, _, _ = _generated(tmp_path, d_in=d, exp=2, n_heads=4, bf=2, n_layers=1, k=8, scale=0.2)
    sae = TemporalSAE.load_from_disk(folder)
    name = "blocks.0.hook_resid_post"
    tokens = torch.tensor([[5, 17, 99, 3, 42, 7, 8, 200], [1, 2, 3, 4, 5, 6, 7, 8]])
    try:
        seen: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            seen["act"] = act.detach().clone()
            return act

        clean = model.run_with_hooks(tokens, fwd_hooks=[(name, grab)])
        store: dict[str, torch.Tensor] = {}
        same = model.run_with_hooks(tokens, fwd_hooks=[(name, sae.hook(store=store, replace=False))])
        torch.testing.assert_close(same, clean, atol=0, rtol=0)  # replace=False reads features, changes nothing
        codes = sae.encode(seen["act"])
        torch.testing.assert_close(store["novel"], codes.novel)
        torch.testing.assert_close(store["pred"], codes.pred)
        assert store["novel"].shape == (2, 8, 2 * d)
        recon = sae(seen["act"])

        def put(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return recon

        spliced = model.run_with_hooks(tokens, fwd_hooks=[(name, sae.hook())])
        expected = model.run_with_hooks(tokens, fwd_hooks=[(name, put)])
        torch.testing.assert_close(spliced, expected, atol=1e-5, rtol=1e-5)
        assert (spliced - clean).abs().max() > 1e-3  # the reconstruction really replaced the activations
    finally:
        model.reset_hooks(including_permanent=True)
