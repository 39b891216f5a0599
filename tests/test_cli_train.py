"""The CLI's training path end to end: cache-activations → train → inspect → upload (offline)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sae_hub import SAE

CLI = [sys.executable, "-m", "sae_hub.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.slow
def test_cache_train_inspect_upload(tiny_model_dir, tmp_path, hub):
    import os

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"The number {i} is followed by {i + 1}. Alice met Bob {i} times." for i in range(60)))
    run("cache-activations", "--model", str(tiny_model_dir), "--dataset", str(texts),
        "--hook", "blocks.0.hook_resid_post", "--hook", "blocks.1.hook_resid_post",
        "--n-tokens", "3000", "--context-size", "32", "--out", str(tmp_path / "acts"))
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["n_tokens"] >= 3000 or manifest["n_tokens"] > 0
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"architecture": "topk", "d_sae": 128, "k": 8, "batch_size": 256, "steps": 30,
                               "log_every": 10, "hook_name": "blocks.1.hook_resid_post"}))
    run("train", str(cfg), "--cache", str(tmp_path / "acts"), "--out", str(tmp_path / "sae"),
        "--set", "seed=3")
    sae = SAE.load_from_disk(tmp_path / "sae")
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 128 and sae.cfg.hook_name == "blocks.1.hook_resid_post"
    # how the cached tokens were made travels manifest -> SAE config (SAELens's ActivationsStore.from_sae needs it)
    assert (sae.cfg.context_size, sae.cfg.prepend_bos, sae.cfg.dataset_path) == (32, True, str(texts))
    assert sae.cfg.model_name == str(tiny_model_dir) and sae.cfg.extra["seqpos_slice"] == [1, None]
    assert "metrics" in sae.cfg.extra and sae.cfg.extra["training"]["seed"] == 3
    shown = run("inspect", str(tmp_path / "sae")).stdout
    assert "topk (k=8)" in shown
    run("upload", str(tmp_path / "sae"), "me/cli-sae", env=dict(os.environ))
    assert "me/cli-sae" in [r for r in ("me/cli-sae",) if hub.repo_exists(r)]
    assert "README.md" in hub.files("me/cli-sae")


def test_train_config_typo_is_one_line_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("architecture: topk\nd_sea: 10\n")
    out = subprocess.run([*CLI, "train", str(cfg), "--cache", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "d_sea" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_train_a_skip_transcoder_from_a_two_hook_cache(tiny_model_dir, tmp_path):
    """``--hook-out``: the CLI trains a transcoder from the cache's two hooks; the saved SAE reads one, writes the
    other and carries a skip connection."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"Carol counted {i} apples and {2 * i} pears." for i in range(40)))
    run("cache-activations", "--model", str(tiny_model_dir), "--dataset", str(texts),
        "--hook", "blocks.0.ln2.hook_normalized", "--hook", "blocks.0.hook_mlp_out",
        "--n-tokens", "2000", "--context-size", "32", "--out", str(tmp_path / "acts"))
    cfg = tmp_path / "train.yaml"
    cfg.write_text("architecture: topk\nd_sae: 96\nk: 6\nbatch_size: 256\nsteps: 20\nlog_every: 10\n")
    run("train", str(cfg), "--cache", str(tmp_path / "acts"), "--hook", "blocks.0.ln2.hook_normalized",
        "--hook-out", "blocks.0.hook_mlp_out", "--set", "skip_connection=true", "--out", str(tmp_path / "tc"))
    sae = SAE.load_from_disk(tmp_path / "tc")
    assert sae.cfg.is_transcoder and sae.cfg.has_skip
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    assert tuple(sae.W_skip.shape) == (sae.cfg.d_out, sae.cfg.d_in)
