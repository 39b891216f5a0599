"""Splicing SAEs into a real (tiny, offline) TransformerLens 4 model, checked against manual computations.

Every expected value here is computed without ``sae_hub.splicing``: activations are captured with TL's own
``run_with_hooks``, reconstructions are written out inline from the SAE's tensors, and substituted back with
another plain ``run_with_hooks`` hook.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sae_hub import SAE, SAEConfig, run_with_saes, splice
from sae_hub.errors import ConfigError

TEXT = ["The quick brown Fox jumps over 13 lazy dogs!", "Paris, 14 July 1789: Hello World."]
ATOL = 1e-5


# --------------------------------------------------------------------------------------------------- helpers


def make_sae(arch: str, hook_name: str | None, d_in: int = 64, d_sae: int = 96, seed: int = 0,
             **kw: Any) -> SAE:
    """An SAE with every parameter random and non-trivial, scaled to the tiny model's activations."""
    if arch == "topk":
        kw.setdefault("k", 8)
    sae = SAE(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, hook_name=hook_name, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.3)
            if name == "b_enc":
                p.add_(0.2)  # so that a good share of features fire
    return sae


def relu_recon(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """relu((x - b_dec*apply) @ W_enc + b_enc) @ W_dec + b_dec (+ x @ W_skip.T), written out."""
    x = x.float()
    xc = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    out = torch.relu(xc @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
    if sae.cfg.has_skip:
        out = out + x @ sae.W_skip.T
    return out


def topk_codes(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    z = torch.relu(x.float() @ sae.W_enc + sae.b_enc)
    vals, idx = z.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, vals)


def topk_recon(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    return topk_codes(sae, x) @ sae.W_dec + sae.b_dec


def capture(model: Any, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """The clean activation at ``hook_name``, read with a plain TL hook."""
    store: dict[str, torch.Tensor] = {}

    def save(act: torch.Tensor, hook: Any) -> None:
        store["act"] = act.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, save)])
    return store["act"]


def run_substituted(model: Any, tokens: torch.Tensor, hook_name: str,
                    replacement: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Logits with ``replacement(act)`` substituted at ``hook_name`` by a plain TL hook."""

    def sub(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return replacement(act).to(act.dtype)

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, sub)])


def n_attached(model: Any) -> int:
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points)


@pytest.fixture
def model(tiny_model: Any) -> Iterator[Any]:
    """The session model; every test must leave no hook behind (checked, then cleaned for the next test)."""
    tiny_model.reset_hooks(including_permanent=True)
    yield tiny_model
    leftover = n_attached(tiny_model)
    tiny_model.reset_hooks(including_permanent=True)
    assert leftover == 0, f"{leftover} hook(s) left attached"


@pytest.fixture
def tokens(model: Any) -> torch.Tensor:
    return model.to_tokens(TEXT)


@pytest.fixture
def clean_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def spliced_logits(model: Any, tokens: torch.Tensor, saes: Any, **kw: Any) -> torch.Tensor:
    with torch.no_grad(), splice(model, saes, **kw):
        return model(tokens)


# ------------------------------------------------------------------------------------------------- the model


def test_tiny_model_has_hooked_transformer_names_and_shapes(model, tokens):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (2, 64, 4, 16)
    for name in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z",
                 "blocks.0.hook_mlp_out", "blocks.0.ln2.hook_normalized"):
        assert name in model.hook_dict
    assert capture(model, tokens, "blocks.0.attn.hook_z").shape == (*tokens.shape, 4, 16)
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert len(set(tokens.flatten().tolist())) > 15  # a varied tokenisation


# -------------------------------------------------------------------------------------------------- (a), (b)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_error_term_leaves_logits_unchanged(model, tokens, clean_logits, arch):
    sae = make_sae(arch, "blocks.1.hook_resid_pre")
    with torch.no_grad(), splice(model, sae, use_error_term=True) as sp:
        logits = model(tokens)
    torch.testing.assert_close(logits, clean_logits, atol=ATOL, rtol=0)
    x = capture(model, tokens, "blocks.1.hook_resid_pre")
    torch.testing.assert_close(sp.features["blocks.1.hook_resid_pre"], sae.encode(x))
    # ...while the splice without the error term does change them
    assert not torch.allclose(spliced_logits(model, tokens, sae), clean_logits, atol=1e-3)


@pytest.mark.parametrize("arch", ["relu", "topk"])
@pytest.mark.parametrize("hook_name", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
def test_splice_equals_manual_reconstruction(model, tokens, clean_logits, arch, hook_name):
    sae = make_sae(arch, hook_name, apply_b_dec_to_input=(arch == "relu"), seed=3)
    recon = relu_recon if arch == "relu" else topk_recon
    x = capture(model, tokens, hook_name)
    expected_recon = recon(sae, x)
    expected = run_substituted(model, tokens, hook_name, lambda act: expected_recon)
    got = spliced_logits(model, tokens, sae)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got, clean_logits, atol=1e-3)


def test_error_term_uses_clean_reconstruction_when_features_are_edited(model, tokens, clean_logits):
    hook = "blocks.0.hook_resid_post"
    sae = make_sae("relu", hook, seed=5)
    x = capture(model, tokens, hook)
    f = torch.relu(x @ sae.W_enc + sae.b_enc)
    off = int(f.sum((0, 1)).argmax())  # the busiest feature
    f_edit = f.clone()
    f_edit[..., off] = 0
    # x + (edited reconstruction - clean reconstruction): the error term comes from the clean one
    expected_act = x + (f_edit @ sae.W_dec) - (f @ sae.W_dec)
    expected = run_substituted(model, tokens, hook, lambda act: expected_act)

    def ablate(feats: torch.Tensor) -> None:
        feats[..., off] = 0

    with torch.no_grad(), splice(model, {"mine": sae}, use_error_term=True, edits={"mine": ablate}) as sp:
        got = model(tokens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got, clean_logits, atol=1e-4)
    assert (sp.features["mine"][..., off] == 0).all()
    # edits can also be set on the handle between passes; removing it gives back the clean logits
    with torch.no_grad(), splice(model, {"mine": sae}, use_error_term=True) as sp:
        sp.edits["mine"] = ablate
        torch.testing.assert_close(model(tokens), expected, atol=ATOL, rtol=1e-5)
        del sp.edits["mine"]
        torch.testing.assert_close(model(tokens), clean_logits, atol=ATOL, rtol=0)


def test_gradients_flow_to_features_through_error_term(model, tokens):
    sae = make_sae("relu", "blocks.0.hook_resid_post")
    with splice(model, sae, use_error_term=True) as sp:
        logits = model(tokens)
        feats = sp.features["blocks.0.hook_resid_post"]
        (grad,) = torch.autograd.grad(logits[0, -1].max(), feats)
    assert grad.shape == feats.shape and grad.abs().sum() > 0


def test_sae_dtype_differs_from_model_dtype(model, tokens):
    hook = "blocks.0.hook_resid_post"
    sae = make_sae("relu", hook)
    sae64 = SAE(sae.cfg.replace(), dtype=torch.float64)
    sae64.load_state_dict({k: v.double() for k, v in sae.state_dict().items()})
    got = spliced_logits(model, tokens, sae64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, spliced_logits(model, tokens, sae), atol=ATOL, rtol=1e-5)


# ------------------------------------------------------------------------------------------- (c) transcoders


@pytest.mark.parametrize("has_skip", [False, True])
def test_transcoder_splice_equals_manual(model, tokens, clean_logits, has_skip):
    sae = make_sae("relu", "blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out",
                   has_skip=has_skip, seed=7)
    assert sae.cfg.is_transcoder
    x_in = capture(model, tokens, "blocks.0.ln2.hook_normalized")
    pred = relu_recon(sae, x_in)
    expected = run_substituted(model, tokens, "blocks.0.hook_mlp_out", lambda act: pred)
    torch.testing.assert_close(spliced_logits(model, tokens, sae), expected, atol=ATOL, rtol=1e-5)
    # with the error term the transcoder is invisible again
    with torch.no_grad(), splice(model, sae, use_error_term=True) as sp:
        torch.testing.assert_close(model(tokens), clean_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(sp.features["blocks.0.ln2.hook_normalized"],
                               torch.relu(x_in @ sae.W_enc + sae.b_enc), atol=1e-6, rtol=1e-5)


def test_transcoder_with_output_before_input_is_refused(model, tokens):
    sae = make_sae("relu", "blocks.1.hook_resid_pre", hook_name_out="blocks.0.hook_mlp_out")
    with pytest.raises(ConfigError, match="fired before its input hook"), splice(model, sae):
        model(tokens)


# ------------------------------------------------------------------------------------------------ (d) hook_z


@pytest.mark.parametrize("reshape", ["hook_z", "none"])
def test_hook_z_sae_equals_manual(model, tokens, reshape):
    hook = "blocks.1.attn.hook_z"
    sae = make_sae("relu", hook, d_in=64, reshape_activations=reshape, seed=11)
    z = capture(model, tokens, hook)
    assert z.shape[-2:] == (4, 16)
    recon = relu_recon(sae, z.flatten(-2)).reshape(z.shape)
    expected = run_substituted(model, tokens, hook, lambda act: recon)
    torch.testing.assert_close(spliced_logits(model, tokens, sae), expected, atol=ATOL, rtol=1e-5)
    _, feats = run_with_saes(model, tokens, sae)
    torch.testing.assert_close(feats[hook], torch.relu(z.flatten(-2) @ sae.W_enc + sae.b_enc),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("head", [0, 2])
def test_hook_head_index_sae_touches_one_head(model, tokens, clean_logits, head):
    hook = "blocks.0.attn.hook_z"
    sae = make_sae("topk", hook, d_in=16, d_sae=32, k=4, hook_head_index=head, seed=13)
    z = capture(model, tokens, hook)
    new_z = z.clone()
    new_z[..., head, :] = topk_recon(sae, z[..., head, :])
    expected = run_substituted(model, tokens, hook, lambda act: new_z)
    got = spliced_logits(model, tokens, sae)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got, clean_logits, atol=1e-4)
    _, feats = run_with_saes(model, tokens, sae)
    torch.testing.assert_close(feats[hook], topk_codes(sae, z[..., head, :]), atol=1e-6, rtol=1e-5)
    # with the error term the other heads and the logits are untouched
    torch.testing.assert_close(spliced_logits(model, tokens, sae, use_error_term=True), clean_logits,
                               atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------- (e) run_with_saes


def test_run_with_saes_two_layers_at_once(model, tokens, clean_logits):
    a = make_sae("relu", "blocks.0.hook_resid_pre", seed=1)
    b = make_sae("topk", "blocks.1.hook_mlp_out", seed=2)
    logits, feats = run_with_saes(model, tokens, [a, b])
    assert logits is None
    assert set(feats) == {"blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"}
    for sae in (a, b):
        x = capture(model, tokens, sae.cfg.hook_name)
        assert feats[sae.cfg.hook_name].shape == (*tokens.shape, sae.cfg.d_sae)
        torch.testing.assert_close(feats[sae.cfg.hook_name], sae.encode(x), atol=0, rtol=0)
    torch.testing.assert_close(feats["blocks.1.hook_mlp_out"],
                               topk_codes(b, capture(model, tokens, "blocks.1.hook_mlp_out")))
    # without stopping early, the logits are the clean ones (nothing was spliced)
    logits, feats2 = run_with_saes(model, tokens, [a, b], stop_early=False)
    torch.testing.assert_close(logits, clean_logits, atol=0, rtol=0)
    torch.testing.assert_close(feats2["blocks.0.hook_resid_pre"], feats["blocks.0.hook_resid_pre"])


def test_run_with_saes_sparse_matches_dense(model, tokens):
    a = make_sae("topk", "blocks.0.hook_resid_post", k=6, seed=4)
    b = make_sae("relu", "blocks.1.hook_resid_pre", seed=5)
    for do_splice in (False, True):  # with a splice, b reads what a wrote: compare like with like
        _, dense = run_with_saes(model, tokens, {"a": a, "b": b}, splice=do_splice)
        _, sparse = run_with_saes(model, tokens, {"a": a, "b": b}, sparse=True, splice=do_splice)
        vals, idx = sparse["a"]
        assert vals.shape == idx.shape == (*tokens.shape, 6)
        rebuilt = torch.zeros_like(dense["a"]).scatter(-1, idx, vals)
        torch.testing.assert_close(rebuilt, dense["a"], atol=1e-6, rtol=1e-5)
        assert sparse["b"].is_sparse
        torch.testing.assert_close(sparse["b"].to_dense(), dense["b"], atol=1e-6, rtol=1e-5)


def test_run_with_saes_stops_early(model, tokens):
    sae = make_sae("relu", "blocks.0.hook_resid_post")
    fired: list[str] = []

    def count(act: torch.Tensor, hook: Any) -> None:
        fired.append("late")

    # a user hook (TL's own context manager) on a later hook point survives run_with_saes untouched
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", count)]):
        logits, _ = run_with_saes(model, tokens, sae)
        assert logits is None and fired == []
        logits, _ = run_with_saes(model, tokens, sae, stop_early=False)
        assert logits is not None and fired == ["late"]
        model(tokens)
        assert fired == ["late", "late"]


def test_run_with_saes_splice_and_text_input(model, tokens):
    a = make_sae("relu", "blocks.0.hook_resid_post", seed=8)
    b = make_sae("topk", "blocks.1.hook_resid_pre", seed=9)
    logits, feats = run_with_saes(model, TEXT, [a, b], splice=True)
    torch.testing.assert_close(logits, spliced_logits(model, tokens, [a, b]), atol=0, rtol=0)
    # with a splice, b reads what a wrote
    with torch.no_grad(), splice(model, a):
        x_b = capture(model, tokens, "blocks.1.hook_resid_pre")
    torch.testing.assert_close(feats["blocks.1.hook_resid_pre"], b.encode(x_b))
    _, one = run_with_saes(model, TEXT[0], a)
    assert one["blocks.0.hook_resid_post"].shape[0] == 1


# ------------------------------------------------------------------------------------------------ (f) errors


def test_unknown_hook_lists_close_matches(model, tokens):
    sae = make_sae("relu", "blocks.0.hook_resid_pree")
    close = r"blocks\.0\.hook_resid_pree.*did you mean.*'blocks\.0\.hook_resid_pre'"
    with pytest.raises(ConfigError, match=close):
        run_with_saes(model, tokens, sae)
    with pytest.raises(ConfigError, match="not a hook point"), splice(model, sae):
        pass
    with pytest.raises(ConfigError, match="no close match"):
        run_with_saes(model, tokens, make_sae("relu", "totally.unrelated.name"))


def test_other_config_errors(model, tokens):
    with pytest.raises(ConfigError, match="no hook_name"):
        run_with_saes(model, tokens, make_sae("relu", None))
    with pytest.raises(ConfigError, match="pass a dict"):
        run_with_saes(model, tokens, [make_sae("relu", "blocks.0.hook_resid_pre"),
                                      make_sae("topk", "blocks.0.hook_resid_pre")])
    with pytest.raises(ConfigError, match="use_hook_mlp_in"):
        run_with_saes(model, tokens, make_sae("relu", "blocks.0.hook_mlp_in"))
    with pytest.raises(ConfigError, match="never fired"):
        run_with_saes(model, tokens, make_sae("relu", "blocks.0.attn.qkv.hook_in", d_in=64))
    with pytest.raises(ConfigError, match="does not fit"):
        run_with_saes(model, tokens, make_sae("relu", "blocks.0.mlp.hook_post", d_in=64))
    with pytest.raises(ConfigError, match="edits for unknown"), splice(
            model, make_sae("relu", "blocks.0.hook_resid_pre"), edits={"nope": lambda f: f}):
        pass


# ----------------------------------------------------------------------------------------------- (g) cleanup


def test_hooks_removed_after_exit_even_on_exception(model, tokens, clean_logits):
    saes = [make_sae("relu", "blocks.0.hook_resid_post"),
            make_sae("relu", "blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out")]
    assert n_attached(model) == 0
    with splice(model, saes):
        assert n_attached(model) == 3
    assert n_attached(model) == 0
    with pytest.raises(RuntimeError, match="boom"), splice(model, saes):
        raise RuntimeError("boom")
    assert n_attached(model) == 0

    def explode(feats: torch.Tensor) -> None:
        raise RuntimeError("inside the forward")

    with pytest.raises(RuntimeError, match="inside the forward"), splice(
            model, saes, edits={"blocks.0.hook_resid_post": explode}):
        model(tokens)
    assert n_attached(model) == 0
    # a failure while attaching (second SAE on a gated hook) leaves nothing behind either
    with pytest.raises(ConfigError), splice(model, [saes[0], make_sae("relu", "blocks.0.hook_mlp_in")]):
        pass
    assert n_attached(model) == 0
    # user hooks attached before are kept
    model.hook_dict["blocks.1.hook_resid_pre"].add_hook(lambda act, hook: None, dir="fwd")
    with splice(model, saes):
        pass
    assert n_attached(model) == 1
    model.reset_hooks()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), clean_logits, atol=0, rtol=0)


def test_import_does_not_pull_in_transformer_lens():
    code = ("import sys, sae_hub, sae_hub.splicing; from sae_hub import splice, run_with_saes; "
            "bad = [m for m in ('transformer_lens', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; import inspect; assert inspect.isfunction(splice), splice")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- TransformerLens 3 style (HookedRootModule)


class _ToyAttn(torch.nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        from transformer_lens.hook_points import HookPoint

        super().__init__()
        self.n_heads = n_heads
        self.W_V = torch.nn.Linear(d, d)
        self.W_O = torch.nn.Linear(d, d)
        self.hook_z = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.W_V(x).unflatten(-1, (self.n_heads, -1))
        z = self.hook_z(torch.tanh(v.cumsum(1)))
        return self.W_O(z.flatten(-2))


class _ToyBlock(torch.nn.Module):
    def __init__(self, d: int) -> None:
        from transformer_lens.hook_points import HookPoint

        super().__init__()
        self.attn = _ToyAttn(d, 4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d))
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.attn(x))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.hook_mlp_in(x))))


def _toy_tl3_model() -> Any:
    """A HookedTransformer look-alike on ``HookedRootModule``, TL 3's base class (kept in TL 4).

    Exercises what ``splice`` relies on with TL 3: a plain ``hook_dict`` attribute built by ``setup()``,
    HookPoints without aliases or reshaping conversions, and a ``check_hooks_to_add`` that asserts.
    """
    from transformer_lens.HookedRootModule import HookedRootModule

    class Toy(HookedRootModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(50, 32)
            self.blocks = torch.nn.ModuleList([_ToyBlock(32) for _ in range(3)])
            self.unembed = torch.nn.Linear(32, 50)
            self.setup()

        def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False,
                               prepend=False) -> None:
            assert not hook_point_name.endswith("hook_mlp_in"), "Cannot add hook_mlp_in if use_hook_mlp_in is False"

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.unembed(x)

    with torch.random.fork_rng():
        return Toy().eval()


def test_works_on_hooked_root_module_models():
    model = _toy_tl3_model()
    tokens = torch.arange(24).reshape(2, 12) % 50
    with torch.no_grad():
        clean = model(tokens)
    sae = make_sae("relu", "blocks.1.hook_resid_post", d_in=32, d_sae=48, seed=21)
    x = capture(model, tokens, "blocks.1.hook_resid_post")
    expected = run_substituted(model, tokens, "blocks.1.hook_resid_post", lambda act: relu_recon(sae, x))
    torch.testing.assert_close(spliced_logits(model, tokens, sae), expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(spliced_logits(model, tokens, sae, use_error_term=True), clean, atol=ATOL,
                               rtol=0)
    # a transcoder, a whole-layer hook_z SAE and a single-head one together
    tc = make_sae("relu", "blocks.0.hook_resid_mid", hook_name_out="blocks.0.hook_mlp_out", d_in=32, seed=22)
    hz = make_sae("topk", "blocks.2.attn.hook_z", d_in=32, k=5, seed=23)
    head = make_sae("relu", "blocks.1.attn.hook_z", d_in=8, hook_head_index=1, seed=24)
    with torch.no_grad(), splice(model, [tc, hz, head], use_error_term=True) as sp:
        torch.testing.assert_close(model(tokens), clean, atol=ATOL, rtol=0)
    assert sp.features["blocks.2.attn.hook_z"].shape == (2, 12, 96)
    assert sp.features["blocks.1.attn.hook_z"].shape == (2, 12, 96)
    # run_with_saes stops after the last needed hook
    late: list[int] = []
    model.hook_dict["blocks.2.hook_resid_pre"].add_hook(lambda act, hook: late.append(1), dir="fwd")
    logits, feats = run_with_saes(model, tokens, [tc, head])
    assert logits is None and late == []
    torch.testing.assert_close(feats["blocks.0.hook_resid_mid"],
                               tc.encode(capture(model, tokens, "blocks.0.hook_resid_mid")))
    model.reset_hooks()
    with pytest.raises(ConfigError, match="use_hook_mlp_in"):
        run_with_saes(model, tokens, make_sae("relu", "blocks.0.hook_mlp_in", d_in=32))
    assert n_attached(model) == 0
