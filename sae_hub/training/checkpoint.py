"""Training checkpoints on disk: the folder layout, the atomic commit, retention, finding and reading them back.

Layout (one folder per checkpoint, under ``TrainConfig.checkpoint_dir``)::

    step_<N:09d>/state.pt     tensors: parameters, Adam state, firing-tracker counts, AuxK dead set, RNG states
    step_<N:09d>/state.json   scalars: format, step, tokens, normalisation constants, world size, the TrainConfig,
                              tracker bookkeeping, AuxK state, Python's RNG, the metrics log

*What* goes in is the trainer's business (:meth:`~sae_hub.training.trainer.Trainer.save_checkpoint` and
``load_checkpoint``); this module owns the folder. A checkpoint is written into a hidden temp folder that is
renamed into place only when complete, so a crash mid-save leaves the previous checkpoint the latest loadable
one, and only finished ``step_<N>`` folders count. ``state.pt`` is read with ``torch.load(weights_only=True)``:
a checkpoint is data, never code. A run resumes only a checkpoint of the same shape (architecture, widths, k,
batch) and world size.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from sae_hub.errors import ConfigError
from sae_hub.training.config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "json_safe",
    "latest_checkpoint",
    "py_rng_from_json",
    "py_rng_to_json",
    "read_checkpoint",
    "resume_path",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^step_(\d+)$")
# What must match between a checkpoint and the run resuming it (the rest may change, e.g. steps or lr).
# decoder_norm / decoder_lr_scale: what the parameters mean and the optimiser's param groups (a checkpoint from
# before their defaults changed cannot be resumed under the new ones)
_MUST_MATCH = ("architecture", "d_in", "d_sae", "k", "batch_size", "transcoder", "skip_connection", "d_out",
               "decoder_norm", "decoder_lr_scale")


def write_checkpoint(root: str | os.PathLike[str], step: int, tensors: dict[str, Any], state: dict[str, Any], *,
                     keep: int) -> Path:
    """Write ``<root>/step_<step>/`` atomically (``tensors`` to state.pt, ``state`` to state.json), then keep only
    the newest ``keep`` checkpoints and clear temp folders of interrupted saves. Returns the folder."""
    from sae_hub.files import write_json_atomic

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(tensors, tmp / "state.pt")
    write_json_atomic(tmp / "state.json", state)
    if final.exists():  # re-saving a step (a resumed run): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)  # the commit point
    for old in sorted(_checkpoints(root))[:-max(1, keep)]:
        shutil.rmtree(old[1], ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_checkpoint(path: str | os.PathLike[str], *, cfg: TrainConfig, world_size: int,
                    map_location: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, tensors)`` of the checkpoint folder ``path``, after checking that the run ``cfg`` on
    ``world_size`` ranks can resume it (a :class:`~sae_hub.errors.ConfigError` naming the field otherwise)."""
    from sae_hub.files import read_json

    path = Path(path)
    state = read_json(path / "state.json")
    saved = TrainConfig.from_dict(state["config"])
    for name in _MUST_MATCH:
        if getattr(saved, name) != getattr(cfg, name):
            raise ConfigError(f"checkpoint {path} has {name}={getattr(saved, name)!r}, this run "
                              f"{getattr(cfg, name)!r}", path=str(path), field=name)
    if state["world_size"] != world_size:
        raise ConfigError(f"checkpoint {path} was written by {state['world_size']} ranks, this run has "
                          f"{world_size}", path=str(path), field="world_size")
    tensors = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    return state, tensors


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step_<N>`` checkpoint under ``root`` (temp folders of interrupted saves are
    ignored: only a finished save is renamed to ``step_<N>``)."""
    found = _checkpoints(Path(root))
    return max(found)[1] if found else None


def resume_path(resume: str | os.PathLike[str] | bool | None, checkpoint_dir: str | None) -> Path | None:
    """The checkpoint folder ``train_sae(..., resume=...)`` means: ``None``/``False`` none; ``True`` the latest
    under ``checkpoint_dir`` if any (a fresh start otherwise); a path, that checkpoint or the latest under it."""
    if resume is None or resume is False:
        return None
    if resume is True:  # continue if there is something to continue; a fresh start otherwise
        return latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    path = Path(resume)
    found = path if (path / "state.json").is_file() else latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    return found


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / "state.pt").is_file() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return out


def py_rng_to_json(state: tuple) -> list:
    """Python's ``random.getstate()`` as JSON (tuples become lists)."""
    return [state[0], list(state[1]), state[2]]


def py_rng_from_json(state: list) -> tuple:
    """Inverse of :func:`py_rng_to_json`, for ``random.setstate``."""
    return (state[0], tuple(state[1]), state[2])


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
