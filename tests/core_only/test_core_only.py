"""A loader-only install (``pip install sae-hub``, no extras) loads every format, lists releases and fetches configs,
and every optional feature fails with one line naming the extra to install.

Runs only where ``SAE_HUB_CORE_ONLY`` is set (anywhere else it is skipped as a whole; there a skip is a failure, see
conftest.py):

* ``installed``: ``.ci/bootstrap.py test`` builds ``.venv-core`` with ``pip install .`` plus pytest and runs this
  file there, so ``sae_hub`` is the installed wheel (checked below) and the extras are really absent;
* ``simulated``: tests/test_extras.py runs it in the main environment with the optional packages blocked
  (``blocker/sitecustomize.py``), so a regression shows up in every test run, not only in CI's core job.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MODE = os.environ.get("SAE_HUB_CORE_ONLY", "")
if not MODE:
    pytest.skip("core-only environment test: .ci/bootstrap.py test runs it in .venv-core "
                "(SAE_HUB_CORE_ONLY=installed); tests/test_extras.py runs it with the extras blocked",
                allow_module_level=True)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import sae_hub  # noqa: E402
from sae_hub import SAE  # noqa: E402
from sae_hub.errors import MissingDependencyError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Multi-layer fixtures (transcoder sets, CLTs, crosscoders) load through MultiLayerDictionary, not SAE (issue 15);
# llamascopium_clt has no loader yet (a later part of issue 15), so only circuit_tracer is loaded here.
MULTILAYER_FAMILIES = {"circuit_tracer", "llamascopium_clt"}
FIXTURES = sorted(p.parent for p in (ROOT / "tests" / "fixtures").glob("*/*/case.json")
                  if p.parent.parent.name not in MULTILAYER_FAMILIES)
MULTILAYER_FIXTURES = sorted(p.parent for p in (ROOT / "tests" / "fixtures").glob("circuit_tracer/*/case.json"))
OPTIONAL = ("plotly", "requests", "pandas", "transformer_lens", "transformers", "datasets")
FORMAT_OF_FAMILY = {"sae_lens": "saelens", "llamascopium": "lm-saes", "overcomplete": "overcomplete",
                    "nanosae": "nanosae"}
TOL = 1e-5


def test_mode_is_known_and_sae_hub_is_the_one_under_test():
    assert MODE in ("installed", "simulated"), MODE
    where = Path(sae_hub.__file__).resolve()
    if MODE == "installed":  # the wheel in .venv-core's site-packages, not the checkout
        assert "site-packages" in where.parts and ROOT / "sae_hub" not in where.parents, where
        assert (where.parent / "loaders" / "saelens.py").is_file() and (where.parent / "registry").is_dir()
    else:
        assert where == ROOT / "sae_hub" / "__init__.py", where


@pytest.mark.parametrize("name", OPTIONAL)
def test_optional_package_is_not_importable(name):
    with pytest.raises(ImportError):
        importlib.import_module(name)


def test_every_fixture_family_is_covered():
    assert {p.parent.name for p in FIXTURES} == set(FORMAT_OF_FAMILY), sorted({p.parent.name for p in FIXTURES})
    assert len(FIXTURES) >= 19


@pytest.mark.parametrize("folder", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_loads_and_reproduces_its_library(folder):
    ref = load_file(folder / "reference.safetensors")
    # batch-dependent top-k needs an explicit opt-in; calibrated on the batch it reproduces the library's batch
    options = {"batchtopk": "jumprelu", "calibration_activations": ref["x"]} if folder.name.startswith(
        "batchtopk_dataset_wise") else {}
    sae = SAE.load_from_disk(folder, **options)
    assert sae.cfg.provenance.source_format == FORMAT_OF_FAMILY[folder.parent.name]
    with torch.no_grad():
        codes = sae.encode(ref["x"])
        assert (codes - ref["codes"]).abs().max().item() <= TOL
        assert (sae.decode(codes) - ref["recon"]).abs().max().item() <= TOL


@pytest.mark.parametrize("folder", MULTILAYER_FIXTURES,
                         ids=lambda p: p.name)
def test_every_multilayer_fixture_loads_and_reproduces_its_library(folder):
    from sae_hub.multilayer import MultiLayerDictionary

    ref = load_file(folder / "reference.safetensors")
    m = MultiLayerDictionary.load_from_disk(folder)
    with torch.no_grad():
        out = m(ref["x"])
        for i, layer in enumerate(m.cfg.layers):
            assert (m.encode(layer, ref["x"][i]) - ref["codes"][i]).abs().max().item() <= TOL
            assert (out[layer] - ref["recon"][i]).abs().max().item() <= TOL


def test_convert_and_save_round_trip(tmp_path):
    src = ROOT / "tests" / "fixtures" / "overcomplete" / "topk"
    (written,) = sae_hub.convert(src, tmp_path / "converted", progress=False)
    again = SAE.load_from_disk(written)
    x = load_file(src / "reference.safetensors")["x"]
    with torch.no_grad():
        assert torch.equal(again(x), SAE.load_from_disk(src)(x))


def test_generated_formats_without_fixtures_load(tmp_path):
    """Gemma Scope (numpy .npz) and sparsify (safetensors + cfg.json), written here: their loaders need only core."""
    import numpy as np
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d, n = 16, 64
    gs = tmp_path / "gemma-scope-2b-pt-res" / "layer_5" / "width_16k" / "average_l0_10"
    gs.mkdir(parents=True)
    np.savez(gs / "params.npz", W_enc=torch.randn(d, n, generator=g).numpy(),
             W_dec=torch.randn(n, d, generator=g).numpy(), b_enc=torch.randn(n, generator=g).numpy(),
             b_dec=torch.randn(d, generator=g).numpy(), threshold=torch.rand(n, generator=g).numpy())
    sp = tmp_path / "sparsify" / "layers.3"
    sp.mkdir(parents=True)
    save_file({"encoder.weight": torch.randn(n, d, generator=g), "encoder.bias": torch.randn(n, generator=g),
               "W_dec": torch.randn(n, d, generator=g), "b_dec": torch.randn(d, generator=g)},
              str(sp / "sae.safetensors"))
    (sp / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
                                             "num_latents": n, "k": 6, "multi_topk": False, "skip_connection": False,
                                             "transcode": False, "d_in": d}))
    x = torch.randn(4, d, generator=g)
    for folder, fmt, arch in ((gs, "gemma-scope", "jumprelu"), (sp, "sparsify", "topk")):
        assert sae_hub.detect_format(folder) == fmt
        sae = SAE.load_from_disk(folder)
        assert sae.cfg.architecture == arch and sae.W_enc.shape == (d, n)
        with torch.no_grad():
            assert torch.isfinite(sae(x)).all()


def test_releases_are_listed():
    releases = sae_hub.list_releases()
    assert len(releases) > 100 and "gpt2-small-res-jb" in releases
    assert "blocks.8.hook_resid_pre" in sae_hub.list_saes("gpt2-small-res-jb")


def test_config_from_the_release_table_through_the_local_hub(hub):
    folder = ROOT / "tests" / "fixtures" / "sae_lens" / "standard"
    hub.add_file("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre/cfg.json",
                 (folder / "cfg.json").read_bytes())
    cfg = SAE.get_config("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    want = json.loads((folder / "cfg.json").read_text())
    assert (cfg.d_in, cfg.d_sae) == (want["d_in"], want["d_sae"])
    assert cfg.extra["release"] == {"name": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre"}


def _lens_sae() -> SAE:
    return SAE.load_from_disk(ROOT / "tests" / "fixtures" / "sae_lens" / "standard")


@pytest.mark.parametrize(("call", "module", "extra"), [
    (lambda: __import__("sae_hub.analysis.plots", fromlist=["x"]).density_histogram(torch.randn(64)),
     "plotly", "analysis"),
    (lambda: sae_hub.analysis.logit_lens(_lens_sae(), torch.randn(16, 40), progress=False).to_pandas(),
     "pandas", "analysis"),
    (lambda: sae_hub.analysis.neuronpedia.feature("gpt2-small/0-res-jb", 0), "requests", "analysis"),
    (lambda: __import__("sae_hub.models", fromlist=["x"]).load_model("gpt2"), "transformer_lens", "lens"),
    (lambda: __import__("sae_hub.demo", fromlist=["x"]).run_synthetic_demo(steps=1), "plotly", "analysis"),
], ids=["plots", "to_pandas", "neuronpedia", "load_model", "demo"])
def test_optional_features_name_the_extra_to_install(call, module, extra):
    with pytest.raises(MissingDependencyError) as info:
        call()
    err = info.value
    assert (err.module, err.extra) == (module, extra)
    assert f"pip install 'sae-hub[{extra}]'" in str(err) and "\n" not in str(err)
    assert isinstance(err, ImportError) and isinstance(err, sae_hub.SaeHubError)


def test_analysis_that_needs_no_extra_works():
    """The logit lens on a raw W_U and its records are plain torch: only the DataFrame view needs pandas."""
    result = sae_hub.analysis.logit_lens(_lens_sae(), torch.randn(16, 40), k=3, progress=False)
    assert len(result.to_records()) == _lens_sae().cfg.d_sae


def test_cli_works_and_names_the_extra_in_one_line(tmp_path):
    run = [sys.executable, "-m", "sae_hub"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run([*run, "list", "gpt2-small-res-*"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "gpt2-small-res-jb" in listed.stdout, listed.stderr
    inspected = subprocess.run([*run, "inspect", str(ROOT / "tests" / "fixtures" / "nanosae" / "sae")],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
    assert inspected.returncode == 0 and "nanosae" in inspected.stdout, inspected.stderr
    demo = subprocess.run([*run, "demo", "--out", str(tmp_path / "demo"), "--steps", "1"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert demo.returncode == 1
    assert demo.stderr.strip() == ("sae-hub: error: plotly is needed for the demo's report, but it is not installed: "
                                   "pip install 'sae-hub[analysis]'"), demo.stderr
