"""Every code block in README.md runs, offline, against the same local fixtures and a local Hub.

The python blocks run in order in one fresh interpreter (they build on each other, as a reader's notebook would),
exactly as written: the README defines everything it uses (``model`` included). The environment points
huggingface_hub at a local Hub server seeded with fixture SAEs under the repo ids the README uses. A ```` ```text ````
block right after a python block is that block's output, and the block must print it: text and integers exactly,
decimal numbers within ``FLOAT_TOLERANCE`` (training runs differ in the last digits across CPUs and torch builds).
The yaml block is the ``my_lab.yaml`` the README registers. Bash blocks run line by line; the quick-start block is
checked against ``.ci/run`` and by running the demo it installs.
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


# A printed decimal number matches the one shown when |printed - shown| <= REL * |shown| + ABS.
FLOAT_TOLERANCE = {"rel": 0.02, "abs": 0.01}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_MARK = "@@readme-block-{}@@"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def python_blocks_with_output() -> list[tuple[str, str | None]]:
    """Each python block with the text block that directly follows it (only blank lines between), if any."""
    found = re.findall(r"```python\n(.*?)```(?:\s*?\n```text\n(.*?)```)?", README, flags=re.S)
    return [(code, out if out else None) for code, out in found]


def outputs_match(printed: str, shown: str) -> bool:
    """Same text with the numbers taken out; integers equal; decimals within FLOAT_TOLERANCE."""
    got, want = printed.split(), shown.split()
    if len(got) != len(want) or _NUMBER.sub("#", printed).split() != _NUMBER.sub("#", shown).split():
        return False
    for a, b in zip(_NUMBER.findall(printed), _NUMBER.findall(shown), strict=True):
        if "." not in b and "e" not in b.lower():
            if a != b:
                return False
        elif abs(float(a) - float(b)) > FLOAT_TOLERANCE["rel"] * abs(float(b)) + FLOAT_TOLERANCE["abs"]:
            return False
    return True


def test_outputs_match_compares_text_exactly_and_numbers_within_tolerance():
    shown = "MMCS 0.991, recovered 99.2%, shape (1, 28, 256) ['⎵the', '\\n']"
    assert outputs_match("MMCS 0.989, recovered 98.9%, shape (1, 28, 256) ['⎵the', '\\n']", shown)
    assert not outputs_match("MMCS 0.950, recovered 99.2%, shape (1, 28, 256) ['⎵the', '\\n']", shown)
    assert not outputs_match("MMCS 0.991, recovered 99.2%, shape (1, 29, 256) ['⎵the', '\\n']", shown)
    assert not outputs_match("MMCS 0.991, recovered 99.2%, shape (1, 28, 256) ['the', '\\n']", shown)
    assert not outputs_match("MMCS 0.991, recovered 99.2%, shape (1, 28, 256)", shown)
    pairs = python_blocks_with_output()
    assert len(pairs) == len(blocks("python")) and sum(out is not None for _, out in pairs) >= 4


@pytest.fixture
def readme_env(tmp_path):
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
        # One thread: same numbers as two (checked), and immune to OpenMP threads spin-waiting on a shared CPU,
        # which turns the training example's ~15 s into minutes.
        env["OMP_NUM_THREADS"] = "1"
        yield work, env, hub


def test_python_blocks_run_in_order_and_print_what_is_shown(readme_env):
    work, env, hub = readme_env
    pairs = python_blocks_with_output()
    script = "\n\n".join(f"print({_MARK.format(i)!r})\n{code}" for i, (code, _) in enumerate(pairs))
    (work / "readme_blocks.py").write_text(script)
    out = subprocess.run([sys.executable, "readme_blocks.py"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = re.split(r"@@readme-block-\d+@@\n", out.stdout)[1:]
    assert len(printed) == len(pairs)
    for i, ((code, shown), got) in enumerate(zip(pairs, printed, strict=True)):
        if shown is not None:
            assert outputs_match(got, shown), f"README python block {i} printed\n{got}\nbut shows\n{shown}\n{code}"
    assert "my-format" in out.stdout  # the custom loader block's detection result
    assert hub.files("me/my-sae")["README.md"].startswith(b"---\nlibrary_name: sae-hub")
    assert (work / "converted" / "topk" / "cfg.json").is_file()


def test_bash_blocks_run(readme_env):
    work, env, _ = readme_env
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAE_HUB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "demo", "--out", str(tmp_path / "demo"),
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "MISSED" not in out.stdout and "SAE.from_pretrained('demo-synthetic', 'topk-512')" in out.stdout
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "plotly" in html and "Recovery" in html and "Decoder row" in html
