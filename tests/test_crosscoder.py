"""Crosscoders by release: ``CrossCoder.from_pretrained`` and ``sae_hub.from_pretrained`` through the release table
and the Hub (the local test Hub of tests/hub_server.py, driven by the real huggingface_hub client), and the typed
refusals of the classes that do not load a crosscoder.

No public crosscoder release in a format sae-hub reads is documented (llamascopium/lm-saes lists none; SAELens
has no crosscoder release; Gemma Scope 2's crosscoders have no loader here), so the release is written by the test,
in the layout llamascopium 2.0.0b34 saves (its own fixture files, tests/fixtures/llamascopium_clt). The reference is
the library's codes and reconstructions stored with the fixture, never sae-hub's output.

Then a crosscoder spliced into the tiny GPT-2 (sae_hub.replacement's rule: encode from a clean pass, patch every
site), against a hand-written patch on the plain transformers model (formula below) and the TL4 bridge.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sae_hub
from sae_hub import SAE, CrossCoder, CrossCoderConfig, MultiLayerDictionary, run_with_saes
from sae_hub.errors import ConfigError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.multilayer import crosscoder_param_shapes
from sae_hub.replacement import splice_replacement

LS = Path(__file__).parent / "fixtures" / "llamascopium_clt"
REPO = "test-org/crosscoders"


@pytest.fixture(autouse=True)
def fresh_registry():
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def _seed(hub) -> None:
    """Two crosscoders in one repo (each folder with the library's files and its reference outputs), a CLT beside
    them, and a release table naming them."""
    for case in ("crosscoder_jumprelu", "crosscoder_relu", "clt_relu"):
        for f in sorted((LS / case).iterdir()):
            hub.add_file(REPO, f"{case}/{f.name}", f.read_bytes())
    sae_hub.registry.add({"releases": [
        {"name": "t-cc", "model": "test/model", "repo_id": REPO, "format": "llamascopium-crosscoder",
         "kind": "crosscoder", "saes": [{"id": "{act}", "path": "crosscoder_{act}", "expand": [{"act": ["jumprelu",
                                                                                                         "relu"]}]}]},
        {"name": "t-cc-clt", "model": "test/model", "repo_id": REPO, "format": "llamascopium-clt", "kind": "clt",
         "saes": [{"id": "relu", "path": "clt_relu"}]}]})


def _fetched(hub) -> list[str]:
    gets = hub.find(method="GET", path_contains="/resolve/")
    return sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in gets)


def _check_against_library(cc: CrossCoder, case: str) -> float:
    ref = load_file(LS / case / "reference.safetensors")
    n = cc.cfg.n_sites
    xs = [ref[f"x.{h}"] for h in range(n)]
    feats, outs = cc.encode(xs), cc(xs)
    err = 0.0
    for h in range(n):
        err = max(err, (feats[h] - ref["codes"][:, h]).abs().max().item(),
                  (outs[h] - ref["recon"][:, h]).abs().max().item())
    return err


def test_crosscoder_from_pretrained_fetches_its_folder_and_matches_the_library(hub):
    _seed(hub)
    cc = CrossCoder.from_pretrained("t-cc", "jumprelu")
    got = _fetched(hub)
    # only what the loader reads, from its own folder: not the other crosscoder, the CLT, or the reference files
    assert got and all(p.startswith("crosscoder_jumprelu/") for p in got), got
    assert "crosscoder_jumprelu/sae_weights.safetensors" in got
    assert not any(p.endswith(("reference.safetensors", "case.json")) for p in got), got
    assert _check_against_library(cc, "crosscoder_jumprelu") <= 1e-5
    assert cc.cfg.model_names == ["test/model"] * cc.cfg.n_sites  # the release's model fills what files omit
    assert cc.cfg.extra["release"] == {"name": "t-cc", "sae_id": "jumprelu"}
    assert cc.cfg.hook_names == ["blocks.2.hook_resid_post", "blocks.4.hook_resid_post", "blocks.6.hook_resid_post"]
    assert any(f.get("sha256") for f in cc.cfg.provenance.source_files)  # the hub verified what it fetched


def test_top_level_from_pretrained_returns_a_crosscoder(hub):
    _seed(hub)
    cc = sae_hub.from_pretrained("t-cc", "relu")
    assert isinstance(cc, CrossCoder)
    assert _check_against_library(cc, "crosscoder_relu") <= 1e-5
    clt = sae_hub.from_pretrained("t-cc-clt", "relu")
    assert isinstance(clt, MultiLayerDictionary) and clt.cfg.kind == "clt"


def test_wrong_class_is_refused_before_any_request_naming_the_call_to_use(hub):
    _seed(hub)
    hub.reset_log()
    with pytest.raises(UnsupportedSAEError, match=r"sae_hub\.CrossCoder\.from_pretrained\('t-cc', 'relu'\)") as e:
        SAE.from_pretrained("t-cc", "relu")
    assert e.value.field == "format" and "test-org/crosscoders" in str(e.value.path)
    with pytest.raises(UnsupportedSAEError, match=r"CrossCoder\.from_pretrained\('t-cc', 'relu'\)"):
        MultiLayerDictionary.from_pretrained("t-cc", "relu")
    with pytest.raises(UnsupportedSAEError, match=r"MultiLayerDictionary\.from_pretrained\('t-cc-clt', 'relu'\)"):
        CrossCoder.from_pretrained("t-cc-clt", "relu")
    assert hub.requests == []  # refused from the release table alone: nothing fetched


# ---------------------------------------------------------------------- splicing a crosscoder into a model
#
# Reference: the Hugging Face GPT-2 with raw torch hooks on its blocks. The clean pass captures each block's output
# h_i; TransformerLens's residual stream (what the TL4 bridge and sae-hub's transformers adapter read) is that minus
# its mean over d_model (center_writing_weights), so x_i = h_i - mean(h_i). Then, written out here:
#     s = sum_i x_i @ W_enc.i + b_enc.i;   f_i = relu(s)  or  s * (s > threshold.i);   recon_i = f_i @ W_dec.i + b_dec.i
# and the patched pass replaces block i's output by recon_i(edited f_i) [+ x_i - recon_i(f_i) with the error term].
# (A per-position constant on the residual stream is removed by every LayerNorm that reads it, ln_f included, so
# the reference need not put the mean back.)


TEXT = ["The quick brown Fox jumps over 13 lazy dogs!", "Paris, 14 July 1789: Hello World."]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("transformers")
    pytest.importorskip("transformer_lens")
    from tiny_model import tiny_family

    return tiny_family("gpt2", tmp_path_factory.mktemp("families"))


def make_cc(arch: str, seed: int = 0, sites: list | None = None, d_out: int | None = None) -> CrossCoder:
    d_in = 64
    cfg = CrossCoderConfig(n_sites=len(sites or SITES), d_in=d_in, d_sae=48, d_out=d_out, architecture=arch,
                           hook_names=list(sites or SITES))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in crosscoder_param_shapes(cfg).items():
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        if key.startswith("W_enc"):
            t = t / (2 * d_in) ** 0.5
        elif key.startswith("b_enc"):
            t = 0.1 * t
        elif key.startswith("threshold"):
            t = 0.3 * t.abs()
        else:
            t = 0.3 * t
        tensors[key] = t.float()
    return CrossCoder.from_state_dict(cfg, tensors)


def _block_hook(fn):
    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        new = fn(h)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


def manual_cc(hf, cc: CrossCoder, tokens: torch.Tensor, *, error_term: bool = False, edit_site: int | None = None,
              mlp: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``(patched logits, clean features per site, clean logits)`` from the formula in the comment above; the sites
    are the blocks' outputs (``hook_resid_post``), or with ``mlp`` the MLPs' outputs (``hook_mlp_out``, also a
    residual-stream tensor to TransformerLens, centred alike)."""
    n = cc.cfg.n_sites

    def module(i: int) -> torch.nn.Module:
        return hf.transformer.h[i].mlp if mlp else hf.transformer.h[i]

    W_enc = [cc.W_enc[h].detach() for h in range(n)]
    b_enc = [cc.b_enc[h].detach() for h in range(n)]
    W_dec = [cc.W_dec[h].detach() for h in range(n)]
    b_dec = [cc.b_dec[h].detach() for h in range(n)]
    hs: dict[int, torch.Tensor] = {}

    def capture(i):
        def fn(h):
            hs[i] = h.detach()
        return fn

    handles = [module(i).register_forward_hook(_block_hook(capture(i))) for i in range(n)]
    try:
        with torch.no_grad():
            clean_logits = hf(input_ids=tokens).logits
    finally:
        for hd in handles:
            hd.remove()
    xs = [hs[i] - hs[i].mean(-1, keepdim=True) for i in range(n)]
    s = sum(xs[h] @ W_enc[h] + b_enc[h] for h in range(n))
    if cc.threshold is None:
        feats = [torch.relu(s)] * n
    else:
        feats = [torch.where(s > cc.threshold[h].detach(), s, torch.zeros_like(s)) for h in range(n)]
    new = []
    for h in range(n):
        used = torch.zeros_like(feats[h]) if h == edit_site else feats[h]
        out = used @ W_dec[h] + b_dec[h]
        if error_term:
            out = out + (xs[h] - (feats[h] @ W_dec[h] + b_dec[h]))
        new.append(out)
    handles = [module(i).register_forward_hook(_block_hook(lambda h, i=i: new[i])) for i in range(n)]
    try:
        with torch.no_grad():
            logits = hf(input_ids=tokens).logits
    finally:
        for hd in handles:
            hd.remove()
    return logits, feats, clean_logits


def lp(x: torch.Tensor) -> torch.Tensor:
    return x.float().log_softmax(-1)


def n_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_crosscoder_splice_patches_every_site_from_the_clean_code(fam, arch):
    hf, bridge = fam["hf"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    cc = make_cc(arch, seed=len(arch))
    ref, ref_feats, clean = manual_cc(hf, cc, tokens)
    with torch.no_grad():
        with splice_replacement(hf, cc, clean_input=tokens) as rp_hf:
            got_hf = hf(input_ids=tokens).logits
        with splice_replacement(bridge, cc, clean_input=tokens) as rp_tl:
            got_tl = bridge(tokens)
    fired = (ref_feats[0] > 0).float().mean().item()
    assert 0.05 < fired < 0.95, fired  # the code decides something
    assert (lp(ref) - lp(clean)).abs().max() > 0.05  # and the patch changes the output
    manual = (got_hf - ref).abs().max().item()
    parity = (lp(got_hf) - lp(got_tl)).abs().max().item()
    MEASURED[f"{arch}: hf vs manual logits"] = manual
    MEASURED[f"{arch}: hf vs bridge logp"] = parity
    assert manual <= 1e-5 and parity <= 1e-5, (manual, parity)
    for h in range(2):
        torch.testing.assert_close(rp_hf.features[h], ref_feats[h], atol=1e-5, rtol=0)
        torch.testing.assert_close(rp_tl.features[h], ref_feats[h], atol=1e-5, rtol=0)
    if arch == "jumprelu":  # a threshold per site: the codes written at the two sites differ
        assert not torch.equal(rp_hf.features[0], rp_hf.features[1])


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_crosscoder_error_term_keeps_logits_and_edits_add_the_decoded_change(fam, arch):
    hf, bridge = fam["hf"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    cc = make_cc(arch, seed=5)
    # the edit is at the LAST site: a residual-stream patch at a later site overwrites what an earlier one changed
    ref, _, clean = manual_cc(hf, cc, tokens, error_term=True, edit_site=1)
    with torch.no_grad():
        clean_tl = bridge(tokens)
        with splice_replacement(hf, cc, clean_input=tokens, use_error_term=True) as rp:
            same_hf = hf(input_ids=tokens).logits
        with splice_replacement(bridge, cc, clean_input=tokens, errors="frozen"):
            same_tl = bridge(tokens)
        with splice_replacement(hf, cc, clean_input=tokens, use_error_term=True, edits={1: lambda f: f.zero_()}):
            edit_hf = hf(input_ids=tokens).logits
        with splice_replacement(bridge, cc, clean_input=TEXT, use_error_term=True, edits={1: torch.zeros_like}):
            edit_tl = bridge(tokens)
        with splice_replacement(hf, cc, clean_input=tokens, use_error_term=True, edits={0: lambda f: f.zero_()}):
            edit_first = hf(input_ids=tokens).logits
    e_hf, e_tl = (same_hf - clean).abs().max().item(), (same_tl - clean_tl).abs().max().item()
    MEASURED[f"{arch}: error term, hf logit change"] = e_hf
    MEASURED[f"{arch}: error term, bridge logit change"] = e_tl
    assert e_hf <= 1e-5 and e_tl <= 1e-5, (e_hf, e_tl)
    assert sorted(rp.errors) == [0, 1] and rp.errors[0].shape == (*tokens.shape, 64)
    assert (lp(edit_hf) - lp(clean)).abs().max() > 0.05
    manual = (edit_hf - ref).abs().max().item()
    MEASURED[f"{arch}: error term + edit, hf vs manual logits"] = manual
    assert manual <= 1e-5, manual
    torch.testing.assert_close(lp(edit_hf), lp(edit_tl), atol=1e-5, rtol=0)
    # the stated rule: site 1 (the last block's output) is patched with its clean activation, so an edit at site 0
    # alone cannot reach the logits
    torch.testing.assert_close(edit_first, clean, atol=1e-5, rtol=0)


def test_run_with_saes_gives_crosscoder_features_and_gradients_reach_them(fam):
    hf, bridge, tok = fam["hf"], fam["bridge"], fam["tokenizer"]
    tokens = bridge.to_tokens(TEXT)
    cc = make_cc("jumprelu", seed=7)
    ref, ref_feats, clean = manual_cc(hf, cc, tokens)
    for model, kw in ((bridge, {}), (hf, {"tokenizer": tok})):
        logits, feats = run_with_saes(model, TEXT, cc, **kw)
        assert logits is None and sorted(feats) == [0, 1]
        for h in range(2):
            torch.testing.assert_close(feats[h], ref_feats[h], atol=1e-5, rtol=0)
        _, sparse = run_with_saes(model, TEXT, cc, sparse=True, **kw)
        torch.testing.assert_close(sparse[1].to_dense(), feats[1])
    logits, feats = run_with_saes(hf, tokens, cc, splice=True)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    logits, _ = run_with_saes(hf, tokens, cc, splice=True, use_error_term=True)
    torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)
    with splice_replacement(bridge, cc, clean_input=tokens, use_error_term=True) as rp:
        out = bridge(tokens)
    grads = torch.autograd.grad(out[0, -1].logsumexp(-1), [rp.features[0], rp.features[1]], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0  # the last block's output is patched whole
    # MLP-output sites add to the residual stream: every site's code reaches the logits, and an edit at site 0
    # does too (hand reference as above, on the MLP modules)
    mlp_cc = make_cc("relu", seed=9, sites=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"])
    ref, _, clean = manual_cc(hf, mlp_cc, tokens, error_term=True, edit_site=0, mlp=True)
    with torch.no_grad(), splice_replacement(hf, mlp_cc, clean_input=tokens, use_error_term=True,
                                             edits={0: lambda f: f.zero_()}):
        edit_hf = hf(input_ids=tokens).logits
    assert (lp(edit_hf) - lp(clean)).abs().max() > 0.05
    manual = (edit_hf - ref).abs().max().item()
    MEASURED["relu, mlp_out sites: error term + edit at site 0, hf vs manual logits"] = manual
    assert manual <= 1e-5, manual
    with splice_replacement(bridge, mlp_cc, clean_input=tokens, use_error_term=True) as rp:
        out = bridge(tokens)
    grads = torch.autograd.grad(out[0, -1].logsumexp(-1), [rp.features[0], rp.features[1]])
    assert all(g.abs().sum() > 0 for g in grads)


def test_crosscoder_splice_refusals_and_hooks_removed(fam):
    hf, bridge = fam["hf"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    cc = make_cc("relu")
    for model in (hf, bridge):
        base = n_hooks(model)
        for kw, fld in (({}, "clean_input"), ({"clean_input": tokens, "errors": "live"}, "errors"),
                        ({"clean_input": tokens, "edits": {2: abs}}, "edits")):
            with pytest.raises(ConfigError) as e, splice_replacement(model, cc, **kw):
                pass
            assert e.value.field == fld, kw
        for bad, fld in ((make_cc("relu", sites=[SITES[0], SITES[0]]), "hook_names"),
                         (make_cc("relu", sites=[SITES[0], None]), "hook_names"),
                         (make_cc("relu", d_out=32), "d_out")):
            with pytest.raises(ConfigError) as e, splice_replacement(model, bad, clean_input=tokens):
                pass
            assert e.value.field == fld
        # the features belong to clean_input: a pass of another shape is refused, not broadcast
        fwd = (lambda t: hf(input_ids=t)) if model is hf else bridge
        with pytest.raises(ShapeMismatchError) as e, splice_replacement(model, cc, clean_input=tokens), \
                torch.no_grad():
            fwd(tokens[:, :5])
        assert e.value.field == "clean_input"
        with pytest.raises(RuntimeError, match="boom"), splice_replacement(model, cc, clean_input=tokens):
            raise RuntimeError("boom")
        assert n_hooks(model) == base


def test_zz_print_measured():
    print("\ncrosscoder splice errors:", {k: f"{v:.1e}" for k, v in MEASURED.items()})
    assert MEASURED and all(v <= 1e-5 for v in MEASURED.values())
