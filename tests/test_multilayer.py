"""The multi-layer dictionary type (sae_hub/multilayer.py): its stated semantics against a real library's outputs
(llamascopium 2.0.0b34 CLT fixtures, mapped into the canonical tensors by hand here), generated cases for other
shapes and dtypes, per-layer SAE views, and typed errors for bad configs, tensors and inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hub import SAE, SAEConfig
from sae_hub.errors import ConfigError, ShapeMismatchError, UnknownArchitectureError, UnsupportedSAEError
from sae_hub.multilayer import (
    CrossCoder,
    CrossCoderConfig,
    MultiLayerConfig,
    MultiLayerDictionary,
    multilayer_param_shapes,
)

LS = Path(__file__).parent / "fixtures" / "llamascopium_clt"
CT = Path(__file__).parent / "fixtures" / "circuit_tracer"


def _llamascopium_clt(case: str) -> tuple[MultiLayerDictionary, dict[str, torch.Tensor]]:
    """The library's weights file in canonical form: W_E[i] is W_enc.i; W_D.{t}[i] (source i into target t) is slot
    t - i of W_dec.i; a decoder-norm JumpReLU gate (z * n > theta, codes divided back by n) is z > theta / n, with n
    the norm of feature j over all of its decoders, as the library computes it for a whole-CLT encode."""
    w = load_file(LS / case / "sae_weights.safetensors")
    n, d, s = w["W_E"].shape
    tensors: dict[str, torch.Tensor] = {}
    for i in range(n):
        tensors[f"W_enc.{i}"] = w["W_E"][i]
        tensors[f"b_enc.{i}"] = w["b_E"][i]
        tensors[f"b_dec.{i}"] = w[f"b_D.{i}"]
        tensors[f"W_dec.{i}"] = torch.stack([w[f"W_D.{t}"][i] for t in range(i, n)], dim=1)
    jump = "activation_function.log_jumprelu_threshold" in w
    if jump:
        theta = w["activation_function.log_jumprelu_threshold"].exp()
        for i in range(n):
            norm = tensors[f"W_dec.{i}"].pow(2).sum(dim=(1, 2)).sqrt()
            tensors[f"threshold.{i}"] = theta[i] / norm
    cfg = MultiLayerConfig(kind="clt", layers=list(range(n)), d_in=d, d_sae=s,
                           architecture="jumprelu" if jump else "relu")
    return MultiLayerDictionary.from_state_dict(cfg, tensors), load_file(LS / case / "reference.safetensors")


@pytest.mark.parametrize("case", ["clt_relu", "clt_jumprelu_decoder_norm"])
def test_llamascopium_clt_expressed_exactly(case: str) -> None:
    m, ref = _llamascopium_clt(case)
    xs = [ref[f"x.{i}"] for i in range(3)]
    feats = m.encode_all(xs)
    out = m.decode(feats)
    for i in range(3):
        assert (feats[i] - ref["codes"][:, i]).abs().max().item() <= 1e-5
        assert (out[i] - ref["recon"][i]).abs().max().item() <= 1e-5
    if "jumprelu" in case:
        assert 0 < (torch.stack(list(feats.values())) > 0).float().mean() < 0.5


def _random(cfg: MultiLayerConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.5 + (0.1 if k.startswith("threshold") else 0)).abs().to(dtype)
            if k.startswith("threshold") else (torch.randn(s, generator=g) * 0.5).to(dtype)
            for k, s in multilayer_param_shapes(cfg).items()}


def _plain_reference(cfg: MultiLayerConfig, t: dict[str, torch.Tensor], xs: list[torch.Tensor]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The module docstring's formulas written out with loops in float64."""
    n = cfg.n_layers
    feats = []
    for i in range(n):
        z = xs[i].double() @ t[f"W_enc.{i}"].double() + t[f"b_enc.{i}"].double()
        if cfg.architecture == "relu":
            f = z.clamp_min(0)
        elif cfg.architecture == "jumprelu":
            f = z * (z > t[f"threshold.{i}"].double())
        else:
            r = z.clamp_min(0)
            keep = torch.zeros_like(r, dtype=torch.bool)
            for row in range(r.shape[0]):
                keep[row, torch.argsort(r[row], descending=True)[: cfg.k]] = True
            f = r * keep
        feats.append(f)
    outs = []
    for target in range(n):
        o = t[f"b_dec.{target}"].double().expand(xs[0].shape[0], -1).clone()
        for i in range(n):
            if target in cfg.targets[i]:  # type: ignore[index]
                o = o + feats[i] @ t[f"W_dec.{i}"][:, cfg.targets[i].index(target)].double()  # type: ignore[index]
        if cfg.has_skip:
            o = o + xs[target].double() @ t[f"W_skip.{target}"].double().T
        outs.append(o)
    return feats, outs


@pytest.mark.parametrize("arch,k", [("relu", None), ("jumprelu", None), ("topk", 3)])
@pytest.mark.parametrize("kind,targets", [("clt", None), ("transcoder_set", None), ("clt", [[0, 2], [1], [2]])])
def test_generated_cases_match_the_stated_semantics(arch: str, k: int | None, kind: str,
                                                    targets: list[list[int]] | None) -> None:
    cfg = MultiLayerConfig(kind=kind, layers=[2, 5, 7], d_in=6, d_out=5, d_sae=[8, 12, 7], architecture=arch, k=k,
                           targets=targets, has_skip=True)
    t = _random(cfg, seed=3)
    m = MultiLayerDictionary.from_state_dict(cfg, t)
    xs = [torch.randn(10, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    feats, outs = _plain_reference(cfg, t, xs)
    got_f = m.encode_all({7: xs[2], 2: xs[0], 5: xs[1]})
    got_o = m(xs)
    for i, layer in enumerate(cfg.layers):
        assert (got_f[layer].double() - feats[i]).abs().max().item() <= 1e-5
        assert (got_o[layer].double() - outs[i]).abs().max().item() <= 1e-5
        assert (m.skip(layer, xs[i]).double() - xs[i].double() @ t[f"W_skip.{i}"].double().T).abs().max() <= 1e-5
    if 2 in m.cfg.targets[0]:  # type: ignore[index]
        assert torch.equal(m.decoder(2, 7), t["W_dec.0"][:, -1])
    else:
        with pytest.raises(ConfigError):
            m.decoder(2, 7)


def test_bfloat16_weights_compute_in_float32_and_keep_their_dtype() -> None:
    cfg = MultiLayerConfig(kind="clt", layers=[0, 1], d_in=8, d_sae=16, architecture="jumprelu")
    t = _random(cfg, seed=5, dtype=torch.bfloat16)
    m = MultiLayerDictionary.from_state_dict(cfg, t)
    assert m.dtype == torch.bfloat16 and m.cfg.dtype == "bfloat16"
    xs = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16) for i in range(2)]
    feats, outs = _plain_reference(cfg, t, xs)
    got = m(xs)
    assert got[1].dtype == torch.bfloat16
    for i in range(2):
        assert (got[i].double() - outs[i]).abs().max().item() <= 0.05 * (1 + outs[i].abs().max().item())
    m32 = MultiLayerDictionary.from_state_dict(cfg, t, dtype="float32")
    assert m32.dtype == torch.float32 and (m32.encode(0, xs[0]).double() - feats[0]).abs().max() <= 1e-5


def test_views_as_sae_transcoders() -> None:
    m = MultiLayerDictionary.load_from_disk(CT / "transcoder_set_jumprelu_skip")
    saes = m.saes()
    assert [s.cfg.hook_name for s in saes] == m.cfg.hook_names_in
    back = MultiLayerDictionary.from_saes(saes)
    assert back.cfg.layers == [0, 1, 2] and back.cfg.hook_names_out == m.cfg.hook_names_out
    x = torch.randn(3, 5, 16)
    for layer in range(3):
        assert torch.equal(back(x)[layer], m(x)[layer])
    # a CLT's layers are not single-layer SAEs: layer 0 decodes onward, the last layer receives other layers' writes
    clt = MultiLayerDictionary.load_from_disk(CT / "clt_relu")
    with pytest.raises(UnsupportedSAEError, match="also decodes"):
        clt.layer_sae(0)
    with pytest.raises(UnsupportedSAEError, match="also write"):
        clt.layer_sae(1)


def test_from_saes_refuses_what_a_set_cannot_state() -> None:
    a = SAE(SAEConfig(architecture="relu", d_in=4, d_sae=8, d_out=3, hook_name="blocks.1.hook_mlp_in"))
    b = SAE(SAEConfig(architecture="relu", d_in=4, d_sae=6, d_out=3, hook_name="blocks.0.hook_mlp_in"))
    m = MultiLayerDictionary.from_saes([a, b])
    assert m.cfg.layers == [0, 1] and m.cfg.d_sae == [6, 8]  # ordered by the layer in each hook name
    gated = SAE(SAEConfig(architecture="gated", d_in=4, d_sae=8, d_out=3))
    with pytest.raises(UnsupportedSAEError):
        MultiLayerDictionary.from_saes([a, gated])
    normed = SAE(SAEConfig(architecture="relu", d_in=4, d_sae=8, d_out=3, normalize_activations="layer_norm"))
    with pytest.raises(UnsupportedSAEError) as e:
        MultiLayerDictionary.from_saes([a, normed])
    assert e.value.field == "normalize_activations"


@pytest.mark.parametrize("kwargs,error,field", [
    ({"kind": "molt"}, ConfigError, "kind"),
    ({"architecture": "gated"}, UnknownArchitectureError, "architecture"),
    ({"layers": [3, 1]}, ConfigError, "layers"),
    ({"layers": []}, ConfigError, "layers"),
    ({"d_sae": [8]}, ConfigError, "d_sae"),
    ({"targets": [[1], [1]]}, ConfigError, "targets"),  # fine: 0 -> 1 is causal ...
    ({"targets": [[0], [0, 1]]}, ConfigError, "targets"),  # ... 1 -> 0 is not
    ({"kind": "transcoder_set", "targets": [[0, 1], [1]]}, ConfigError, "targets"),
    ({"architecture": "topk"}, ConfigError, "k"),
    ({"architecture": "topk", "k": 9}, ConfigError, "k"),
    ({"k": 2}, ConfigError, "k"),
    ({"has_skip": 1}, ConfigError, "has_skip"),
    ({"hook_names_in": ["a"]}, ConfigError, "hook_names_in"),
])
def test_bad_configs_are_typed_errors(kwargs: dict, error: type, field: str) -> None:
    base = {"kind": "clt", "layers": [0, 1], "d_in": 4, "d_sae": 8}
    base.update(kwargs)
    if kwargs == {"targets": [[1], [1]]}:
        assert MultiLayerConfig(**base).targets == [[1], [1]]
        return
    with pytest.raises(error) as e:
        MultiLayerConfig(**base)
    assert e.value.field == field


def test_bad_tensors_and_inputs_are_typed_errors() -> None:
    cfg = MultiLayerConfig(kind="clt", layers=[0, 1], d_in=4, d_sae=8)
    t = _random(cfg)
    for mutate, field in (
        (lambda d: d.pop("W_dec.1"), "W_dec.1"),
        (lambda d: d.update({"W_skip.0": torch.zeros(4, 4)}), "W_skip.0"),
        (lambda d: d.update({"W_dec.0": torch.zeros(8, 1, 4)}), "W_dec.0"),
        (lambda d: d.update({"b_enc.1": torch.zeros(8, dtype=torch.int64)}), "b_enc.1"),
    ):
        bad = dict(t)
        mutate(bad)
        with pytest.raises(ShapeMismatchError) as e:
            MultiLayerDictionary.from_state_dict(cfg, bad, source="here.safetensors")
        assert e.value.field == field and e.value.path == "here.safetensors"
    m = MultiLayerDictionary.from_state_dict(cfg, t)
    x = torch.randn(2, 4)
    with pytest.raises(ConfigError):
        m.encode(5, x)
    with pytest.raises(ShapeMismatchError):
        m.encode(0, torch.randn(2, 5))
    with pytest.raises(ConfigError):
        m.decode({0: torch.zeros(2, 8)})  # every source is needed for the targets it writes
    with pytest.raises(ShapeMismatchError):
        m.decode([torch.zeros(2, 8), torch.zeros(2, 7)])
    with pytest.raises(ShapeMismatchError):
        m.decode([torch.zeros(2, 8), torch.zeros(3, 8)])
    with pytest.raises(ConfigError):
        m.skip(0, x)
    with pytest.raises(ConfigError):
        m.decoder(1, 0)


def test_config_round_trips_through_a_dict() -> None:
    m = MultiLayerDictionary.load_from_disk(CT / "clt_jumprelu")
    d = m.cfg.to_dict()
    back = MultiLayerConfig.from_dict(d)
    assert back.to_dict() == d
    with pytest.raises(ConfigError):
        MultiLayerConfig.from_dict({**d, "bogus": 1})


@pytest.mark.parametrize("case", ["crosscoder_relu", "crosscoder_jumprelu"])
def test_llamascopium_crosscoder_expressed_exactly(case: str) -> None:
    """W_E[h], b_E[h], W_D[h], b_D[h] are site h's tensors; the library's one threshold theta_j, gated on
    s * ||W_D[h, j]|| and divided back, is the per-site threshold theta_j / ||W_D[h, j]||."""
    w = load_file(LS / case / "sae_weights.safetensors")
    ref = load_file(LS / case / "reference.safetensors")
    n, d, s = w["W_E"].shape
    tensors = {}
    for h in range(n):
        tensors.update({f"W_enc.{h}": w["W_E"][h], f"b_enc.{h}": w["b_E"][h], f"W_dec.{h}": w["W_D"][h],
                        f"b_dec.{h}": w["b_D"][h]})
    jump = "activation_function.log_jumprelu_threshold" in w
    if jump:
        theta = w["activation_function.log_jumprelu_threshold"].exp()
        for h in range(n):
            tensors[f"threshold.{h}"] = theta / w["W_D"][h].norm(dim=-1)
    cfg = CrossCoderConfig(n_sites=n, d_in=d, d_sae=s, architecture="jumprelu" if jump else "relu")
    cc = CrossCoder.from_state_dict(cfg, tensors)
    xs = [ref[f"x.{h}"] for h in range(n)]
    feats = cc.encode(xs)
    outs = cc(xs)
    for h in range(n):
        assert (feats[h] - ref["codes"][:, h]).abs().max().item() <= 1e-5
        assert (outs[h] - ref["recon"][:, h]).abs().max().item() <= 1e-5
    if jump:  # the per-site gate matters: some feature fires at one site and not at another
        assert not torch.equal(feats[0] > 0, feats[1] > 0)
    with pytest.raises(ShapeMismatchError):
        cc.encode(xs[:2])
    with pytest.raises(ShapeMismatchError):
        CrossCoder.from_state_dict(cfg, {k: v for k, v in tensors.items() if k != "b_dec.1"})


def test_float64_weights_compute_in_float64() -> None:
    """A float64 dictionary or crosscoder is for exact references (finite differences of the frozen-error
    replacement model): its math stays in float64 (it used to run in float32: ~1e-8 off a float64 reference)."""
    cfg = MultiLayerConfig(kind="clt", layers=[0, 1, 2], d_in=6, d_sae=[9, 8, 7], architecture="jumprelu",
                           has_skip=True)
    t = {k: v.double() for k, v in _random(cfg, seed=11).items()}
    m = MultiLayerDictionary.from_state_dict(cfg, t)
    assert m.compute_dtype == torch.float64
    xs = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(3)]
    feats, outs = _plain_reference(cfg, t, xs)
    got = m(xs)
    for i in range(3):
        assert got[i].dtype == torch.float64
        assert (m.encode(i, xs[i]) - feats[i]).abs().max().item() <= 1e-12
        assert (got[i] - outs[i]).abs().max().item() <= 1e-12
    cc_cfg = CrossCoderConfig(n_sites=2, d_in=6, d_sae=9, architecture="jumprelu")
    g = torch.Generator().manual_seed(2)
    ct = {f"{n}.{h}": torch.randn(s, generator=g, dtype=torch.float64)
          for h in range(2) for n, s in (("W_enc", (6, 9)), ("b_enc", (9,)), ("W_dec", (9, 6)), ("b_dec", (6,)),
                                        ("threshold", (9,)))}
    cc = CrossCoder.from_state_dict(cc_cfg, ct)
    x = [xs[0], xs[1]]
    s = sum(x[h] @ ct[f"W_enc.{h}"] + ct[f"b_enc.{h}"] for h in range(2))
    for h, (f, out) in enumerate(zip(cc.encode(x), cc(x), strict=True)):
        ref = s * (s > ct[f"threshold.{h}"])
        assert (f - ref).abs().max().item() <= 1e-12
        assert (out - (ref @ ct[f"W_dec.{h}"] + ct[f"b_dec.{h}"])).abs().max().item() <= 1e-12
