"""Every code block in README.md runs, offline, against the same local fixtures and a local Hub.

The python blocks run in order in one fresh interpreter (they build on each other, as a reader's notebook would).
A short prelude, not shown in the README, provides ``model`` (the tiny offline GPT-2) and points
huggingface_hub at a local Hub server seeded with fixture SAEs under the repo ids the README uses. The yaml block
is the ``my_lab.yaml`` the README registers. Bash blocks run line by line; the quick-start block is checked
against ``.ci/run`` and by running the demo it installs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIX = ROOT / "tests" / "fixtures" / "sae_lens"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def readme_env(tmp_path, tiny_model_dir):
    """A working folder (tests/ reachable as in the repo), a seeded local Hub, and the client env for it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tests").symlink_to(ROOT / "tests")
    (work / "my_lab.yaml").write_text(blocks("yaml")[0])
    with HubServer() as hub:
        for repo, folder, case in (("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre", "standard"),
                                   ("my-org/my-saes", "layer_3/topk", "topk")):
            for name in ("cfg.json", "sae_weights.safetensors"):
                hub.add_file(repo, f"{folder}/{name}", (FIX / case / name).read_bytes())
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "SAE_HUB_CACHE": str(tmp_path / "cache"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("HF_HUB_OFFLINE", None)
        yield work, env, hub, tiny_model_dir


def test_python_blocks_run_in_order(readme_env):
    work, env, hub, model_dir = readme_env
    prelude = ("import sys\nsys.path.insert(0, 'tests')\nfrom tiny_model import boot_tiny_model\n"
               f"model = boot_tiny_model({str(model_dir)!r})\n")
    script = prelude + "\n\n".join(blocks("python"))
    (work / "readme_blocks.py").write_text(script)
    out = subprocess.run([sys.executable, "readme_blocks.py"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "my-format" in out.stdout  # the custom loader block's detection result
    assert hub.files("me/my-sae")["README.md"].startswith(b"---\nlibrary_name: sae-hub")
    assert (work / "converted" / "topk" / "cfg.json").is_file()


def test_bash_blocks_run(readme_env):
    work, env, _, _ = readme_env
    quick_start = blocks("bash")[0]
    for block in blocks("bash")[1:]:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, (block, out.stderr[-2000:])
    assert "python3 .ci/bootstrap.py test" in quick_start and "python3 .ci/bootstrap.py demo" in quick_start


def test_ci_runs_exactly_the_readme_test_command():
    quick_start = blocks("bash")[0]
    test_line = next(line.split("#")[0].strip() for line in quick_start.splitlines() if "bootstrap.py test" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == [test_line]


@pytest.mark.slow
def test_demo_from_the_quick_start_runs_offline(tmp_path):
    """The demo command's job (`sae-hub demo`), offline, with its default settings."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAE_HUB_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "demo", "--out", str(tmp_path / "demo"),
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "MISSED" not in out.stdout and "SAE.from_pretrained('demo-synthetic', 'topk-512')" in out.stdout
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "plotly" in html and "Recovery" in html and "Decoder row" in html
