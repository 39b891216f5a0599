"""The pluggable loader registry: decorator, duplicates, entry points, autodetection errors."""

from __future__ import annotations

import json
import re
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


def test_interrupted_discovery_is_retried_not_left_half_done():
    """Ctrl-C while the built-in loader modules import must not leave the process with only the formats imported
    before it: discovery counts as done only once every module imported (it used to be marked done first)."""
    code = (
        "import importlib, sae_hub.loading as L\n"
        "real, hit = importlib.import_module, []\n"
        "def flaky(name, *a):\n"
        "    if name == 'sae_hub.loaders.lm_saes' and not hit:\n"
        "        hit.append(name)\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a)\n"
        "importlib.import_module = flaky\n"
        "try:\n    L.list_loaders()\nexcept KeyboardInterrupt:\n    print('interrupted')\n"
        "print(','.join(L.list_loaders()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines[0] == "interrupted"
    assert set(lines[1].split(",")) >= {"dictionary-learning", "gemma-scope", "gemma-scope-2", "goodfire", "lm-saes",
                                        "nanosae", "overcomplete", "qwen-scope", "saelens", "sparsify"}


def test_detection_precedence_is_declared_in_the_registry(tmp_path, scratch_loaders):
    """Two formats whose files look alike: the one registered with the higher priority wins, and a file inside a
    folder that format recognises is not claimed by the lower one; equal priorities stay ambiguous."""
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("model.bin", "other.bin", "checkpoints/step_1.bin"):
        (folder / name).write_bytes(b"x")

    def never(p, o):
        raise NotImplementedError

    sae_hub.register_loader("generic-bin", files=["*.bin"],
                            detect=lambda p: p.suffix == ".bin" or (p / "model.bin").is_file())(never)
    sae_hub.register_loader("trainer-run", files=["model.bin"], priority=10,
                            detect=lambda p: p.name == "model.bin" or (p / "model.bin").is_file())(never)
    assert sae_hub.detect_format(folder) == "trainer-run"
    assert sae_hub.detect_format(folder / "model.bin") == "trainer-run"
    with pytest.raises(FormatDetectionError, match="trainer-run folder"):
        sae_hub.detect_format(folder / "other.bin")  # inside trainer-run's folder: not generic-bin's
    with pytest.raises(FormatDetectionError, match="trainer-run folder"):
        sae_hub.detect_format(folder / "checkpoints" / "step_1.bin")
    alone = tmp_path / "alone.bin"
    alone.write_bytes(b"x")
    assert sae_hub.detect_format(alone) == "generic-bin"
    sae_hub.register_loader("trainer-run-2", files=["model.bin"], priority=10,
                            detect=lambda p: (p / "model.bin").is_file())(never)
    with pytest.raises(FormatDetectionError, match="ambiguous"):
        sae_hub.detect_format(folder)
    with pytest.raises(LoaderRegistrationError, match="priority"):
        sae_hub.register_loader("bad", files=["x"], detect=lambda p: False, priority="high")  # type: ignore[arg-type]


def test_no_builtin_loader_names_another():
    """Precedence lives in the registry: a loader module's code mentions no other built-in format's name or module
    (docstrings may, to explain)."""
    import ast

    from sae_hub.loading import loaders

    builtin = {ld.name: ld.load.__module__.rsplit(".", 1)[-1] for ld in loaders().values()
               if ld.load.__module__.startswith("sae_hub.loaders.")}
    root = Path(__file__).resolve().parent.parent / "loaders"
    for name, module in builtin.items():
        tree = ast.parse((root / f"{module}.py").read_text(encoding="utf-8"))
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        code = " ".join(str(n.value) for n in ast.walk(tree)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs)
        code += " " + " ".join(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
        code += " " + " ".join(n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
        for other, other_module in builtin.items():
            if other != name and builtin[name] != other_module:
                for word in {other, other_module}:  # as a word, or inside an identifier (_dictionary_learning_folder)
                    assert not re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9]|[_-]\d)", code), (module, word)
