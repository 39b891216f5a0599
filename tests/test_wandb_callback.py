"""``WandbCallback``: the real wandb client in offline mode, and what it wrote read back from its ``.wandb`` file.

wandb 0.31 ships no Python reader for its run files (the old ``wandb.sdk.internal.datastore`` is gone; the
writer is the Go ``wandb-core``), so :func:`_read_run_file` reads the container -- LevelDB's log format, which
wandb uses: a 7-byte file header ``":W&B", 0xBEE1, version``, then 32 KiB blocks of records with a 7-byte header
``(crc32, length, type)`` where type 1 = full, 2/3/4 = first/middle/last fragment -- and parses each record with
wandb's own protobuf (``wandb.proto.wandb_internal_pb2.Record``). The values compared are the ones the wandb
client serialised, against the trainer's own ``sae.training_log``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sae_hub.errors import ConfigError, MissingDependencyError
from sae_hub.training import SyntheticActivations, TrainConfig, WandbCallback, train_sae

ROOT = Path(__file__).resolve().parent.parent


def _read_run_file(path: Path) -> list[Any]:
    """Every record of a ``.wandb`` run file, as ``wandb_internal_pb2.Record`` messages, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), (ident, magic)
    block, pos, records, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb with every folder it writes under tmp_path and no network."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_run_holds_every_logged_metric_and_the_final_summary_and_config(offline_wandb):
    data = SyntheticActivations(d=16, n_features=32, mean_active=3, seed=0)
    cfg = TrainConfig(architecture="matryoshka_batchtopk", d_sae=64, k=3, batch_size=128, steps=12, log_every=4,
                      device="cpu", num_threads=1, lr=1e-2, dead_window_tokens=2000)
    cb = WandbCallback(project="sae-hub-test", mode="offline", dir=str(offline_wandb), name="h23")
    sae = train_sae(cfg, data, progress=False, callbacks=[cb])
    files = list((offline_wandb / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = _read_run_file(files[0])
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    log = sae.training_log
    assert [e["step"] for e in log] == [4, 8, 12]
    assert [h["_step"] for h in history] == [4, 8, 12]
    for h, e in zip(history, log, strict=True):  # every value exactly as the trainer logged it
        assert {k: v for k, v in h.items() if not k.startswith("_")} == {k: v for k, v in e.items() if k != "step"}
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    final = log[-1]
    assert all(summary[k] == final[k] for k in final if k != "step"), (summary, final)
    assert summary["final_step"] == 12 and summary["sae/architecture"] == "jumprelu" and summary["sae/d_sae"] == 64
    assert summary["sae/matryoshka_widths"] == [4, 8, 16, 32, 64]
    assert summary["sae/batchtopk_threshold"] == sae.cfg.extra["batchtopk_threshold"]["value"]
    config: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind in ("config", "run"):
            config.update(_items((r.config if kind == "config" else r.run.config).update))
    training = sae.cfg.extra["training"]  # the resolved TrainConfig: every default filled in
    for key in ("architecture", "d_sae", "k", "lr", "batch_size", "steps", "matryoshka_widths", "seed"):
        assert config[key] == training[key], key
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


def test_an_open_run_is_logged_into_and_left_open(offline_wandb):
    import wandb

    run = wandb.init(project="sae-hub-test", mode="offline", dir=str(offline_wandb))
    try:
        data = SyntheticActivations(d=8, n_features=16, seed=0)
        cfg = TrainConfig(architecture="topk", d_sae=16, k=2, batch_size=32, steps=4, log_every=2, device="cpu",
                          num_threads=1)
        train_sae(cfg, data, progress=False, callbacks=[WandbCallback(run=run)])
        run.log({"after": 1.0}, step=100)  # still open: a finished run would refuse this
        assert run.summary["sae/architecture"] == "topk" and run.summary["final_step"] == 4
    finally:
        run.finish()
    with pytest.raises(ConfigError) as info:
        WandbCallback(project="x", run=run)
    assert info.value.field == "run"


def test_without_wandb_the_callback_names_the_extra_and_sae_hub_never_imports_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails as if it were not installed
    with pytest.raises(MissingDependencyError) as info:
        WandbCallback(project="x")
    assert info.value.extra == "wandb" and str(info.value).endswith("pip install 'sae-hub[wandb]'")
    code = ("import sys, sae_hub, sae_hub.training, sae_hub.training.callbacks, sae_hub.training.trainer\n"
            "from sae_hub.training import WandbCallback\n"
            "assert 'wandb' not in sys.modules, 'wandb imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_trainer_calls_on_train_end_once_with_the_saved_sae_and_plain_functions_still_work(tmp_path):
    seen: list[Any] = []

    class Recorder:
        def __call__(self, metrics: dict[str, Any]) -> None:
            seen.append(("log", metrics["step"]))

        def on_train_end(self, sae: Any) -> None:
            seen.append(("end", sae.cfg.architecture, (tmp_path / "out" / "cfg.json").exists()))

    data = SyntheticActivations(d=8, n_features=16, seed=0)
    cfg = TrainConfig(architecture="topk", d_sae=16, k=2, batch_size=32, steps=4, log_every=2, device="cpu",
                      num_threads=1, output_dir=str(tmp_path / "out"))
    plain: list[int] = []
    train_sae(cfg, data, progress=False, callbacks=[Recorder(), lambda m: plain.append(m["step"])])
    assert seen == [("log", 2), ("log", 4), ("end", "topk", True)] and plain == [2, 4]
