"""overcomplete / psn loader: library-written fixtures, generated variants, refusals.

Generated cases pickle small stand-in classes registered at run time under the real module paths
(``overcomplete.sae.*`` / ``psn.sae.*``), so the files reference exactly the globals the library's pickles do.
Their forward passes are written here from the library's documented semantics and serve as the reference.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from parity import parity_errors
from safetensors.torch import load_file
from torch import nn

from sae_hub import SAE
from sae_hub.errors import ConfigError, CorruptFileError, UnsafeCheckpointError, UnsupportedSAEError
from sae_hub.loading import detect_format

FIXTURES = Path(__file__).parent / "fixtures" / "overcomplete"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
TOL = 1e-5




def _state_dict_options(case: dict) -> dict:
    cls = case["class"].rsplit(".", 1)[-1]
    if cls == "TopKSAE":
        return {"top_k": case["top_k"]}
    if cls == "BatchTopKSAE":
        return {"running_threshold": case["running_threshold"]}
    if cls == "SAE":
        return {"architecture": "relu"}
    return {}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("target", ["folder", "module.pt", "state_dict.pt"])
def test_fixture_reproduces_library(case, target):
    folder = FIXTURES / case
    meta = json.loads((folder / "case.json").read_text())
    ref = load_file(folder / "reference.safetensors")
    path = folder if target == "folder" else folder / target
    options = _state_dict_options(meta) if target == "state_dict.pt" else {}
    assert detect_format(path) == "overcomplete"
    sae = SAE.load_from_disk(path, **options)
    errs = parity_errors(sae, ref)
    assert max(errs) <= TOL, (case, target, errs)
    assert sae.cfg.provenance.source_format == "overcomplete"
    assert sae.cfg.provenance.source_files == [{"name": "module.pt" if target != "state_dict.pt" else target}]
    assert torch.count_nonzero(sae.b_dec) == 0


def test_fixture_architectures():
    expect = {"sae_relu": ("relu", None), "topk": ("topk", 5), "jump": ("jumprelu", None),
              "batchtopk": ("jumprelu", None)}
    for case, (arch, k) in expect.items():
        sae = SAE.load_from_disk(FIXTURES / case)
        assert (sae.cfg.architecture, sae.cfg.k) == (arch, k)
    bt = SAE.load_from_disk(FIXTURES / "batchtopk")
    assert torch.allclose(bt.threshold, torch.full((64,), 2.7503836154937744))
    assert any("BatchTopKSAE eval mode" in c for c in bt.cfg.provenance.conversions)
    jump = SAE.load_from_disk(FIXTURES / "jump")
    assert any(">=" in c for c in jump.cfg.provenance.conversions)


def test_state_dict_needs_the_class(tmp_path):
    with pytest.raises(ConfigError, match=r"architecture='relu'.*top_k.*running_threshold") as err:
        SAE.load_from_disk(FIXTURES / "topk" / "state_dict.pt")
    assert err.value.field == "architecture"
    with pytest.raises(ConfigError):
        SAE.load_from_disk(FIXTURES / "topk" / "state_dict.pt", top_k=5, running_threshold=1.0)
    with pytest.raises(ConfigError, match="architecture must be one of"):
        SAE.load_from_disk(FIXTURES / "topk" / "state_dict.pt", architecture="gated")
    with pytest.raises(ConfigError, match="thresholds"):
        SAE.load_from_disk(FIXTURES / "jump" / "state_dict.pt", top_k=3)
    with pytest.raises(ConfigError, match="needs top_k"):
        SAE.load_from_disk(FIXTURES / "topk" / "state_dict.pt", architecture="topk")


def test_options_contradicting_the_pickle():
    with pytest.raises(ConfigError, match="contradicts the pickled top_k=5"):
        SAE.load_from_disk(FIXTURES / "topk", top_k=7)
    with pytest.raises(ConfigError, match="contradicts the pickled class"):
        SAE.load_from_disk(FIXTURES / "topk", architecture="relu")
    assert SAE.load_from_disk(FIXTURES / "topk", top_k=5).cfg.k == 5
    with pytest.raises(ConfigError, match="does not take option"):
        SAE.load_from_disk(FIXTURES / "topk", k=5)


def test_truncated_module_is_a_typed_error(tmp_path):
    data = (FIXTURES / "topk" / "module.pt").read_bytes()
    (tmp_path / "module.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path)
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path, format="overcomplete")


# ------------------------------------------------------------------------------------------ stand-in library


def _normalize_l2(x):
    return x / (torch.norm(x, p=2, dim=1, keepdim=True) + 1e-8)


def _normalize_max_l2(x):
    return x / torch.amax(torch.norm(x, p=2, dim=1, keepdim=True), dim=0, keepdim=True)


def _normalize_identity(x):
    return x


class _Lib:
    """Stand-in overcomplete classes, placed in sys.modules under ``<pkg>.sae.*`` for the duration of a test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pkg: str) -> None:
        self.pkg = pkg
        self._mp = monkeypatch
        self.modules: dict[str, types.ModuleType] = {}
        for name in (pkg, f"{pkg}.sae"):
            self._module(name)
        self._build()

    def _module(self, name: str) -> types.ModuleType:
        if name not in self.modules:
            mod = types.ModuleType(name)
            self.modules[name] = mod
            self._mp.setitem(sys.modules, name, mod)
        return self.modules[name]

    def _put(self, obj, module: str, name: str):
        mod = self._module(f"{self.pkg}.sae.{module}")
        obj.__module__, obj.__qualname__, obj.__name__ = mod.__name__, name, name
        setattr(mod, name, obj)
        return obj

    def forget(self) -> None:
        """Drop the stand-ins from sys.modules: loading must not need them."""
        for name in self.modules:
            self._mp.delitem(sys.modules, name, raising=False)

    def _build(self) -> None:
        def copy_fn(fn, name):
            return types.FunctionType(fn.__code__, fn.__globals__, name)

        self.normalize_l2 = self._put(copy_fn(_normalize_l2, "normalize_l2"), "dictionary", "normalize_l2")
        self.normalize_max_l2 = self._put(copy_fn(_normalize_max_l2, "normalize_max_l2"), "dictionary",
                                          "normalize_max_l2")
        self.normalize_identity = self._put(copy_fn(_normalize_identity, "normalize_identity"), "dictionary",
                                            "normalize_identity")
        norms = {"l2": self.normalize_l2, "max_l2": self.normalize_max_l2, "identity": self.normalize_identity}

        class DictionaryLayer(nn.Module):
            def __init__(self, d_in, d_sae, normalization="l2", use_multiplier=False):
                super().__init__()
                self.normalization = norms[normalization]
                self._weights = nn.Parameter(torch.randn(d_sae, d_in))
                if use_multiplier:
                    self.multiplier = nn.Parameter(torch.tensor(0.3))
                else:
                    self.register_buffer("multiplier", torch.tensor(0.0))
                self._fused_dictionary = None

            def get_dictionary(self):
                if self.training:
                    with torch.no_grad():
                        self._weights.data = self.normalization(self._weights)
                    return self._weights * torch.exp(self.multiplier)
                return self._fused_dictionary

            def train(self, mode=True):
                if not mode:
                    self._fused_dictionary = self.get_dictionary()
                return super().train(mode)

            def forward(self, z):
                return z @ self.get_dictionary()

        class RelaxedArchetypalDictionary(nn.Module):
            def __init__(self, d_in, d_sae, points, delta=1.0):
                super().__init__()
                self.delta = delta
                self.register_buffer("C", points)
                self.W = nn.Parameter(torch.randn(d_sae, points.shape[0]))
                self.Relax = nn.Parameter(torch.randn(d_sae, d_in))
                self.multiplier = nn.Parameter(torch.tensor(0.2))
                self._fused_dictionary = None

            def get_dictionary(self):
                if self.training:
                    with torch.no_grad():
                        W = torch.relu(self.W)
                        W /= W.sum(dim=-1, keepdim=True) + 1e-8
                        self.W.data = W
                        scale = torch.clamp(self.delta / self.Relax.norm(dim=-1, keepdim=True), max=1)
                        self.Relax.data *= scale
                    return (self.W @ self.C + self.Relax) * torch.exp(self.multiplier)
                return self._fused_dictionary

            def train(self, mode=True):
                if not mode:
                    self._fused_dictionary = self.get_dictionary()
                return super().train(mode)

            def forward(self, z):
                return z @ self.get_dictionary()

        class MLPEncoder(nn.Module):
            def __init__(self, d_in, d_sae, nb_blocks=0, norm_layer=nn.Identity, activation=nn.ReLU):
                super().__init__()
                self.mlp_blocks = nn.ModuleList(
                    [nn.Sequential(nn.Linear(d_in, d_in), norm_layer(d_in), nn.ReLU()) for _ in range(nb_blocks - 1)]
                )
                self.final_block = nn.Sequential(nn.Linear(d_in, d_sae), norm_layer(d_sae))
                self.final_activation = activation()

            def forward(self, x):
                for block in self.mlp_blocks:
                    x = block(x)
                pre = self.final_block(x)
                return pre, self.final_activation(pre)

        class TieableEncoder(nn.Module):
            def __init__(self, d_in, d_sae, bias=True):
                super().__init__()
                self.weight = nn.Parameter(torch.randn(d_sae, d_in) * 0.3)
                self.bias = nn.Parameter(torch.randn(d_sae) * 0.3) if bias else None

            def forward(self, x):
                pre = x @ self.weight.T + (self.bias if self.bias is not None else 0)
                return pre, torch.relu(pre)

        class AttentionEncoder(nn.Module):
            def __init__(self, d_in, d_sae):
                super().__init__()
                self.final_block = nn.Sequential(nn.Linear(d_in, d_sae), nn.LayerNorm(d_sae))

        class SAE(nn.Module):
            def __init__(self, d_in, d_sae, encoder=None, dictionary=None):
                super().__init__()
                self.encoder = encoder if encoder is not None else MLPEncoder(d_in, d_sae)
                self.dictionary = dictionary if dictionary is not None else DictionaryLayer(d_in, d_sae)
                self.nb_concepts = d_sae

            def encode(self, x):
                return self.encoder(x)

            def forward(self, x):
                pre, codes = self.encode(x)
                return pre, codes, self.dictionary(codes)

        class TopKSAE(SAE):
            def __init__(self, d_in, d_sae, top_k, **kw):
                super().__init__(d_in, d_sae, **kw)
                self.top_k = top_k

            def encode(self, x):
                pre, _ = self.encoder(x)
                codes = torch.relu(pre)
                vals, idx = codes.topk(self.top_k, dim=-1)
                return pre, torch.zeros_like(codes).scatter(-1, idx, vals)

        class BatchTopKSAE(SAE):
            def __init__(self, d_in, d_sae, top_k, running_threshold=None, **kw):
                super().__init__(d_in, d_sae, **kw)
                self.top_k = top_k
                self.running_threshold = running_threshold

            def encode(self, x):  # eval mode only
                pre, _ = self.encoder(x)
                codes = torch.relu(pre)
                return pre, codes * (codes >= self.running_threshold)

        class JumpSAE(SAE):
            def __init__(self, d_in, d_sae, **kw):
                super().__init__(d_in, d_sae, **kw)
                self.thresholds = nn.Parameter(torch.randn(d_sae) * 0.3 - 1.0)

            def encode(self, x):
                pre, _ = self.encoder(x)
                codes = torch.relu(pre)
                return pre, codes * (codes >= torch.exp(self.thresholds))

        class RATopKSAE(TopKSAE):
            pass

        class MpSAE(SAE):
            pass

        class QSAE(SAE):
            def __init__(self, d_in, d_sae, **kw):
                super().__init__(d_in, d_sae, **kw)
                self.Q = nn.Parameter(torch.linspace(0, 1, 4))

        self.DictionaryLayer = self._put(DictionaryLayer, "dictionary", "DictionaryLayer")
        self.RelaxedArchetypalDictionary = self._put(RelaxedArchetypalDictionary, "archetypal_dictionary",
                                                     "RelaxedArchetypalDictionary")
        self.MLPEncoder = self._put(MLPEncoder, "modules", "MLPEncoder")
        self.TieableEncoder = self._put(TieableEncoder, "modules", "TieableEncoder")
        self.AttentionEncoder = self._put(AttentionEncoder, "modules", "AttentionEncoder")
        self.SAE = self._put(SAE, "base", "SAE")
        self.TopKSAE = self._put(TopKSAE, "topk_sae", "TopKSAE")
        self.BatchTopKSAE = self._put(BatchTopKSAE, "batchtopk_sae", "BatchTopKSAE")
        self.JumpSAE = self._put(JumpSAE, "jump_sae", "JumpSAE")
        self.RATopKSAE = self._put(RATopKSAE, "ra_sae", "RATopKSAE")
        self.MpSAE = self._put(MpSAE, "mp_sae", "MpSAE")
        self.QSAE = self._put(QSAE, "qsae", "QSAE")


@pytest.fixture
def oc(monkeypatch):
    return _Lib(monkeypatch, "overcomplete")


@pytest.fixture
def psn(monkeypatch):
    return _Lib(monkeypatch, "psn")


D_IN, D_SAE = 12, 40


def _perturb_bn(bn: nn.BatchNorm1d) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
        bn.weight.copy_(torch.randn_like(bn.weight))
        bn.bias.copy_(torch.randn_like(bn.bias))


def _save(model: nn.Module, folder: Path, *, eval_mode: bool = True) -> dict[str, torch.Tensor]:
    """Save module.pt + state_dict.pt; return the reference (eval-mode library forward) on random x."""
    folder.mkdir(parents=True, exist_ok=True)
    x = torch.randn(10, D_IN) * 2 + 0.5
    model.train()
    if eval_mode:
        model.eval()
        torch.save(model, folder / "module.pt")
        torch.save(model.state_dict(), folder / "state_dict.pt")
    else:
        torch.save(model, folder / "module.pt")  # pickled in train mode: no fused dictionary
        torch.save(model.state_dict(), folder / "state_dict.pt")
        model.eval()
    with torch.no_grad():
        _, codes, recon = model(x)
    return {"x": x, "codes": codes, "recon": recon}


def _check(path: Path, ref: dict[str, torch.Tensor], **options) -> SAE:
    assert detect_format(path) == "overcomplete"
    sae = SAE.load_from_disk(path, **options)
    errs = parity_errors(sae, ref)
    assert max(errs) <= TOL, errs
    assert (ref["codes"] > 0).any()
    return sae


# ------------------------------------------------------------------------------------------ generated cases


def test_mlp_bn_1_fold(oc, tmp_path):
    torch.manual_seed(0)
    enc = oc.MLPEncoder(D_IN, D_SAE, nb_blocks=1, norm_layer=nn.BatchNorm1d)
    _perturb_bn(enc.final_block[1])
    enc.final_block[1].eps = 1e-3
    model = oc.SAE(D_IN, D_SAE, encoder=enc)
    ref = _save(model, tmp_path / "m")
    oc.forget()
    sae = _check(tmp_path / "m", ref)
    assert any("BatchNorm1d folded" in c and "eps=0.001" in c for c in sae.cfg.provenance.conversions)
    # the state dict does not carry eps: the default 1e-5 is off, bn_eps= fixes it
    _check(tmp_path / "m" / "state_dict.pt", ref, architecture="relu", bn_eps=1e-3)
    sae = SAE.load_from_disk(tmp_path / "m" / "state_dict.pt", architecture="relu")
    assert not torch.allclose(sae.encode(ref["x"]), ref["codes"], atol=TOL)
    with pytest.raises(ConfigError, match="bn_eps"):
        SAE.load_from_disk(tmp_path / "m", bn_eps=1e-5)


def test_psn_topk_with_bn_and_state_dict_top_k(psn, tmp_path):
    torch.manual_seed(1)
    enc = psn.MLPEncoder(D_IN, D_SAE, nb_blocks=1, norm_layer=nn.BatchNorm1d)
    _perturb_bn(enc.final_block[1])
    model = psn.TopKSAE(D_IN, D_SAE, top_k=6, encoder=enc, dictionary=psn.DictionaryLayer(D_IN, D_SAE,
                                                                                         use_multiplier=True))
    ref = _save(model, tmp_path / "m")
    psn.forget()
    sae = _check(tmp_path / "m", ref)
    assert sae.cfg.extra["source_class"] == "psn.sae.topk_sae.TopKSAE" and sae.cfg.k == 6
    _check(tmp_path / "m" / "state_dict.pt", ref, top_k=6)


def test_jump_and_batchtopk_generated(oc, tmp_path):
    torch.manual_seed(2)
    jump = oc.JumpSAE(D_IN, D_SAE, dictionary=oc.DictionaryLayer(D_IN, D_SAE, use_multiplier=True))
    ref = _save(jump, tmp_path / "j")
    _check(tmp_path / "j", ref)
    _check(tmp_path / "j" / "state_dict.pt", ref)
    bt = oc.BatchTopKSAE(D_IN, D_SAE, top_k=64, running_threshold=torch.tensor(0.8))
    ref = _save(bt, tmp_path / "b")
    _check(tmp_path / "b", ref)
    _check(tmp_path / "b" / "state_dict.pt", ref, running_threshold=0.8)
    bt0 = oc.BatchTopKSAE(D_IN, D_SAE, top_k=64, running_threshold=torch.tensor(0.0))
    ref = _save(bt0, tmp_path / "b0")
    assert _check(tmp_path / "b0", ref).cfg.architecture == "relu"


def test_dictionary_pickled_in_train_mode(oc, tmp_path):
    """No fused dictionary: W_dec = normalization(_weights) * exp(multiplier), incl. max_l2."""
    torch.manual_seed(3)
    for norm in ("l2", "max_l2"):
        model = oc.SAE(D_IN, D_SAE, dictionary=oc.DictionaryLayer(D_IN, D_SAE, normalization=norm,
                                                                  use_multiplier=True))
        with torch.no_grad():
            model.dictionary._weights.mul_(3.0)  # not normalised when saved
        ref = _save(model, tmp_path / norm, eval_mode=False)
        sae = _check(tmp_path / norm, ref)
        assert any(f"normalize_{norm}" in c for c in sae.cfg.provenance.conversions)
        _check(tmp_path / norm / "state_dict.pt", ref, architecture="relu", normalization=norm)


def test_state_dict_normalization_must_be_known(oc, tmp_path):
    torch.manual_seed(4)
    model = oc.SAE(D_IN, D_SAE, dictionary=oc.DictionaryLayer(D_IN, D_SAE, normalization="identity"))
    with torch.no_grad():
        model.dictionary._weights.mul_(3.0)
    ref = _save(model, tmp_path / "m")
    sd = tmp_path / "m" / "state_dict.pt"
    with pytest.raises(ConfigError, match="normalization") as err:
        SAE.load_from_disk(sd, architecture="relu")
    assert err.value.field == "normalization"
    _check(sd, ref, architecture="relu", normalization="identity")
    _check(tmp_path / "m", ref)
    with pytest.raises(ConfigError, match="contradicts"):
        SAE.load_from_disk(tmp_path / "m", normalization="l2")


def test_relaxed_archetypal_dictionary(oc, tmp_path):
    torch.manual_seed(5)
    points = torch.randn(20, D_IN)
    for eval_mode in (True, False):
        dictionary = oc.RelaxedArchetypalDictionary(D_IN, D_SAE, points, delta=0.5)
        model = oc.RATopKSAE(D_IN, D_SAE, top_k=5, dictionary=dictionary)
        folder = tmp_path / f"ra_{eval_mode}"
        ref = _save(model, folder, eval_mode=eval_mode)
        sae = _check(folder, ref)
        assert sae.cfg.architecture == "topk"
        if not eval_mode:
            # the state dict holds the unprojected W/Relax; delta is not stored
            _check(folder / "state_dict.pt", ref, top_k=5, delta=0.5)
            with pytest.raises(AssertionError):
                _check(folder / "state_dict.pt", ref, top_k=5)  # default delta=1.0 is not this SAE


def test_untied_encoder(oc, tmp_path):
    torch.manual_seed(6)
    model = oc.SAE(D_IN, D_SAE, encoder=oc.TieableEncoder(D_IN, D_SAE))
    ref = _save(model, tmp_path / "u")
    _check(tmp_path / "u", ref)
    _check(tmp_path / "u" / "state_dict.pt", ref, architecture="relu")
    model = oc.SAE(D_IN, D_SAE, encoder=oc.TieableEncoder(D_IN, D_SAE, bias=False))
    ref = _save(model, tmp_path / "nb")
    _check(tmp_path / "nb" / "state_dict.pt", ref, architecture="relu")


def test_folder_prefers_module_pt(oc, tmp_path):
    model = oc.TopKSAE(D_IN, D_SAE, top_k=4)
    _save(model, tmp_path / "m")
    sae = SAE.load_from_disk(tmp_path / "m")
    assert sae.cfg.provenance.source_files == [{"name": "module.pt"}] and sae.cfg.k == 4
    (tmp_path / "m" / "module.pt").unlink()
    with pytest.raises(ConfigError, match="top_k"):
        SAE.load_from_disk(tmp_path / "m")
    assert SAE.load_from_disk(tmp_path / "m", top_k=4).cfg.provenance.source_files == [{"name": "state_dict.pt"}]


# ------------------------------------------------------------------------------------------ refusals


def _refuses(path: Path, match: str, **options) -> None:
    with pytest.raises(UnsupportedSAEError, match=match):
        SAE.load_from_disk(path, **options)


def test_unsupported_variants(oc, tmp_path):
    torch.manual_seed(7)
    cases = {
        "mp": (oc.MpSAE(D_IN, D_SAE), "matching pursuit"),
        "qsae": (oc.QSAE(D_IN, D_SAE), "quantises"),
        "mlp_ln_1": (oc.SAE(D_IN, D_SAE, encoder=oc.MLPEncoder(D_IN, D_SAE, 1, norm_layer=nn.LayerNorm)),
                     "LayerNorm"),
        "mlp_bn_3": (oc.SAE(D_IN, D_SAE, encoder=oc.MLPEncoder(D_IN, D_SAE, 3, norm_layer=nn.BatchNorm1d)),
                     "hidden"),
        "gelu": (oc.SAE(D_IN, D_SAE, encoder=oc.MLPEncoder(D_IN, D_SAE, activation=nn.GELU)), "not ReLU"),
        "attention": (oc.SAE(D_IN, D_SAE, encoder=oc.AttentionEncoder(D_IN, D_SAE)), "non-linear"),
        "no_threshold": (oc.BatchTopKSAE(D_IN, D_SAE, top_k=8, running_threshold=None), "running_threshold"),
    }
    for name, (model, match) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        model.eval()
        torch.save(model, folder / "module.pt")
        torch.save(model.state_dict(), folder / "state_dict.pt")
        _refuses(folder, match)
    # the same refusals from bare state dicts, where the keys allow it
    _refuses(tmp_path / "qsae" / "state_dict.pt", "QSAE")
    _refuses(tmp_path / "mlp_ln_1" / "state_dict.pt", "LayerNorm", architecture="relu")
    _refuses(tmp_path / "mlp_bn_3" / "state_dict.pt", "hidden blocks", architecture="relu")
    mp_sd = {k: v for k, v in oc.MpSAE(D_IN, D_SAE).state_dict().items() if k.startswith("dictionary.")}
    torch.save(mp_sd, tmp_path / "mp_only_dictionary.pt")
    _refuses(tmp_path / "mp_only_dictionary.pt", "matching-pursuit", architecture="relu")
    tied = {"encoder.bias": torch.zeros(D_SAE), "encoder.tied_to._weights": torch.randn(D_SAE, D_IN),
            "encoder.tied_to.multiplier": torch.tensor(0.0), "dictionary._weights": torch.randn(D_SAE, D_IN),
            "dictionary.multiplier": torch.tensor(0.0)}
    torch.save(tied, tmp_path / "tied.pt")
    _refuses(tmp_path / "tied.pt", "tied", architecture="relu")


def test_malicious_module_is_refused_before_anything_runs(oc, tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    model = oc.TopKSAE(D_IN, D_SAE, top_k=3)
    model.extra = Payload()
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save(model, folder / "module.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins.exec"):
        SAE.load_from_disk(folder)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins.exec"):
        SAE.load_from_disk(folder, format="overcomplete")
    assert not marker.exists()
