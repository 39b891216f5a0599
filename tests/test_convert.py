"""sae_hub.convert / ``sae-hub convert``: round trips, provenance, batch conversion."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hub import SAE, convert
from sae_hub.errors import FormatDetectionError
from sae_hub.files import sha256_file

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("case", ["sae_lens/jumprelu", "sae_lens/gated", "sae_lens/topk"])
def test_convert_round_trip_gives_identical_outputs(case, tmp_path):
    (out,) = convert(FIX / case, tmp_path / "out")
    direct, converted = SAE.load_from_disk(FIX / case), SAE.load_from_disk(out)
    x = load_file(FIX / case / "reference.safetensors")["x"]
    assert torch.equal(direct(x), converted(x)) and torch.equal(direct.encode(x), converted.encode(x))
    files = {f["name"]: f["sha256"] for f in converted.cfg.provenance.source_files}
    weights = (FIX / case / "sae_weights.safetensors").read_bytes()
    assert files["sae_weights.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert converted.cfg.provenance.source_format == "saelens"


@pytest.mark.parametrize("size", [0, 1, 4095, (1 << 24) + 3])
def test_sha256_file_equals_hashlib(tmp_path, size):
    data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(size)).numpy()
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    assert sha256_file(path) == hashlib.sha256(data.tobytes()).hexdigest()


def test_convert_records_dtype_and_fold(tmp_path):
    (out,) = convert(FIX / "sae_lens/jumprelu", tmp_path / "o", dtype="bfloat16", fold_decoder_norm=True)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    assert cfg["metadata"]["provenance"]["conversions"] == ["cast float32->bfloat16", "fold_W_dec_norm"]
    sae = SAE.load_from_disk(out)
    ref = load_file(FIX / "sae_lens/jumprelu/reference.safetensors")
    torch.testing.assert_close(sae(ref["x"]).float(), ref["recon"], atol=0.1, rtol=0.02)


def test_convert_a_folder_of_many_saes(tmp_path):
    src = tmp_path / "lab"
    for case in ("standard", "topk"):
        shutil.copytree(FIX / "sae_lens" / case, src / "layer3" / case)
    (src / "notes.txt").write_text("not an SAE")
    written = convert(src, tmp_path / "native", progress=False)
    assert sorted(p.relative_to(tmp_path / "native").as_posix() for p in written) == ["layer3/standard",
                                                                                       "layer3/topk"]
    assert SAE.load_from_disk(tmp_path / "native/layer3/topk").cfg.k == 6


def test_convert_nothing_recognisable(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FormatDetectionError):
        convert(tmp_path, tmp_path / "out")


def test_cli_convert_and_inspect(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "convert", str(FIX / "sae_lens/gated"),
                          str(tmp_path / "g"), "--dtype", "float32"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "g"
    shown = subprocess.run([sys.executable, "-m", "sae_hub.cli", "inspect", str(tmp_path / "g")],
                           capture_output=True, text=True, check=True).stdout
    assert "gated" in shown and "sae_weights.safetensors" in shown


def test_provenance_lists_only_the_files_the_loader_read(tmp_path):
    """An overcomplete folder holds module.pt and state_dict.pt; the loader reads module.pt only."""
    (out,) = convert(FIX / "overcomplete/topk", tmp_path / "o")
    files = SAE.load_from_disk(out).cfg.provenance.source_files
    assert [f["name"] for f in files] == ["module.pt"]
    assert files[0]["sha256"] == sha256_file(FIX / "overcomplete/topk/module.pt")
