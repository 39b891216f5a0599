"""The pluggable loader registry: decorator, duplicates, entry points, autodetection errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sae_hub
from sae_hub import SAE, SAEConfig
from sae_hub.errors import FormatDetectionError, LoaderRegistrationError
from sae_hub.loading import _LOADERS

FIX = Path(__file__).parent / "fixtures" / "sae_lens"


@pytest.fixture
def scratch_loaders():
    sae_hub.list_loaders()  # discover the built-ins before taking the snapshot
    before = dict(_LOADERS)
    yield
    _LOADERS.clear()
    _LOADERS.update(before)


def _my_format(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_meta.json").write_text(json.dumps({"d_in": 6, "d_sae": 10}))
    save_file({"enc": torch.randn(10, 6, generator=g), "enc_b": torch.randn(10, generator=g),
               "dec": torch.randn(6, 10, generator=g), "dec_b": torch.randn(6, generator=g)},
              folder / "weights.safetensors")
    return folder


def test_custom_loader_is_used_by_load_from_disk(tmp_path, scratch_loaders):
    from sae_hub.files import read_json, read_safetensors

    @sae_hub.register_loader("my-format", files=["my_meta.json", "weights.safetensors"],
                             detect=lambda p: (p / "my_meta.json").is_file())
    def load(path, options):
        meta = read_json(path / "my_meta.json")
        t, _ = read_safetensors(path / "weights.safetensors")
        cfg = SAEConfig(architecture="relu", d_in=meta["d_in"], d_sae=meta["d_sae"])
        return cfg, {"W_enc": t["enc"].T, "b_enc": t["enc_b"], "W_dec": t["dec"].T, "b_dec": t["dec_b"]}

    folder = _my_format(tmp_path)
    assert "my-format" in sae_hub.list_loaders()
    sae = SAE.load_from_disk(folder)
    assert sae.cfg.provenance.source_format == "my-format"
    assert sae.cfg.provenance.source_files == [{"name": "my_meta.json"}, {"name": "weights.safetensors"}]
    x = torch.randn(3, 6)
    from safetensors.torch import load_file

    t = load_file(folder / "weights.safetensors")
    torch.testing.assert_close(sae.encode(x), torch.relu(x @ t["enc"].T + t["enc_b"]))


def test_registering_a_taken_name_needs_replace(scratch_loaders):
    with pytest.raises(LoaderRegistrationError, match="already registered"):
        sae_hub.register_loader("saelens", files=["cfg.json"], detect=lambda p: False)(lambda p, o: None)
    sae_hub.register_loader("saelens", files=["cfg.json"], detect=lambda p: False, replace=True)(lambda p, o: None)


def test_malformed_registrations(scratch_loaders):
    with pytest.raises(LoaderRegistrationError, match="declare the files"):
        sae_hub.register_loader("x", files=[], detect=lambda p: False)
    with pytest.raises(LoaderRegistrationError, match="detect must be callable"):
        sae_hub.register_loader("x", files=["a"], detect=None)  # type: ignore[arg-type]


def test_ambiguous_and_unrecognised_folders(tmp_path, scratch_loaders):
    shutil.copytree(FIX / "standard", tmp_path / "s")
    sae_hub.register_loader("greedy", files=["cfg.json"], detect=lambda p: True)(lambda p, o: None)
    with pytest.raises(FormatDetectionError, match=r"ambiguous.*greedy.*saelens|ambiguous.*saelens.*greedy"):
        SAE.load_from_disk(tmp_path / "s")
    assert SAE.load_from_disk(tmp_path / "s", format="saelens").cfg.architecture == "relu"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("x")
    with pytest.raises(FormatDetectionError, match=r"no loader recognises this; found \['notes.md'\]; tried .*saelens"):
        SAE.load_from_disk(tmp_path / "junk")


def test_detection_only_asks_loaders_whose_files_are_present(tmp_path, scratch_loaders):
    """A loader declaring files absent from a folder is never asked about it (its detect would claim it)."""
    sae_hub.register_loader("elsewhere", files=["other.bin"], detect=lambda p: True)(lambda p, o: None)
    shutil.copytree(FIX / "standard", tmp_path / "s")
    assert sae_hub.detect_format(tmp_path / "s") == "saelens"


def test_entry_point_plugin_is_discovered(tmp_path):
    """A third-party package registers through the ``sae_hub.loaders`` entry-point group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sae_hub_plugin_demo.py").write_text(
        "import sae_hub\n"
        "@sae_hub.register_loader('plugin-demo', files=['plugin.marker'], "
        "detect=lambda p: (p / 'plugin.marker').exists())\n"
        "def load(path, options):\n    raise NotImplementedError\n")
    dist = site / "sae_hub_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sae-hub-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sae_hub.loaders]\nplugin-demo = sae_hub_plugin_demo\n")
    code = "import sae_hub; print(sae_hub.list_loaders())"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "'plugin-demo'" in out.stdout and "'saelens'" in out.stdout
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "plugin.marker").write_text("x")
    code = f"import sae_hub; print(sae_hub.detect_format({str(tmp_path / 'sae')!r}))"  # no built-in matches
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "plugin-demo"


def test_detection_cache_never_returns_a_stale_format(tmp_path, scratch_loaders):
    shutil.copytree(FIX / "standard", tmp_path / "s")
    assert sae_hub.detect_format(tmp_path / "s") == "saelens"
    (tmp_path / "s" / "cfg.json").rename(tmp_path / "s" / "old_cfg.json")
    with pytest.raises(FormatDetectionError):
        sae_hub.detect_format(tmp_path / "s")
    (tmp_path / "s" / "old_cfg.json").rename(tmp_path / "s" / "cfg.json")
    assert sae_hub.detect_format(tmp_path / "s") == "saelens"
    sae_hub.register_loader("greedy2", files=["cfg.json"], detect=lambda p: True)(lambda p, o: None)
    with pytest.raises(FormatDetectionError, match="ambiguous"):  # a new loader invalidates cached answers
        sae_hub.detect_format(tmp_path / "s")
