"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun) end with the weights of 1 process at the
same global batch and seed, and a data-parallel run resumes from its checkpoint exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import torch

from sae_hub.training import TrainConfig, train_sae

# batch_size is the global batch: each of the 2 ranks reads 128 of the 256 tokens of every step.
# decoder_lr_scale=1: this test compares arithmetic (2 ranks' all-reduced gradients vs one process's, summed in
# another order, ~1e-7 apart). At the default x25 the decoder's lr here would be 0.125, where that rounding grows
# fastest: one run in ~14 exceeded the tolerance (next to tests/test_matryoshka.py; 0 of 6 alone), a property of
# the step size, not of data parallelism, which this keeps the test about.
CFG = dict(architecture="topk", d_sae=192, k=3, batch_size=256, steps=30, lr=5e-3, lr_warmup_steps=5,
           log_every=10, device="cpu", dead_window_tokens=2560, init_tokens=512, checkpoint_every=10,
           decoder_lr_scale=1.0)

WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from sae_hub.training import TrainConfig, train_sae
    from sae_hub.training.trainer import TensorSource

    cfg, data, out = eval(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3]

    # 1. train_sae detects torchrun (RANK/WORLD_SIZE) and creates the gloo group
    straight = train_sae(TrainConfig(**cfg, checkpoint_dir=out + "/a"), data, progress=False)
    rank = int(__import__("os").environ["RANK"])
    torch.save({**straight.state_dict(), "log": torch.tensor([e["fvu"] for e in straight.training_log])},
               f"{out}/straight_{rank}.pt")

    # 2. a run that dies at step 25 on every rank (the data stops), then resumes from step 20's checkpoint
    #    (the group created by run 1 is reused)
    assert dist.is_initialized()

    class Dying(TensorSource):
        def batches(self, batch_size, *, seed, rank=0, world_size=1, start=0):
            for i, x in enumerate(super().batches(batch_size, seed=seed, rank=rank, world_size=world_size,
                                                  start=start)):
                if start + i == 25:
                    raise RuntimeError("preempted")
                yield x

    try:
        train_sae(TrainConfig(**cfg, checkpoint_dir=out + "/b"), Dying(data), progress=False)
    except RuntimeError as e:
        assert "preempted" in str(e)
    resumed = train_sae(TrainConfig(**cfg, checkpoint_dir=out + "/b"), data, progress=False, resume=True)
    torch.save(resumed.state_dict(), f"{out}/resumed_{rank}.pt")
""")


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4096, 24, generator=g) @ torch.randn(24, 24, generator=g) + 1.0


def test_two_processes_match_one_and_resume(tmp_path):
    data = _data()
    torch.save(data, tmp_path / "data.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), repr(CFG), str(tmp_path / "data.pt"), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hung collective: take the workers down with the launcher
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-5000:]

    single = train_sae(TrainConfig(**CFG, checkpoint_dir=str(tmp_path / "single")), data, progress=False)
    ref = single.state_dict()
    r0 = torch.load(tmp_path / "straight_0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "straight_1.pt", weights_only=True)
    for name, t in ref.items():
        torch.testing.assert_close(r0[name], t, rtol=1e-4, atol=1e-5, msg=f"rank 0 vs one process: {name}")
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
    # the logged FVU is over the global batch (all-reduced), so it matches the single process's too
    torch.testing.assert_close(r0["log"], torch.tensor([e["fvu"] for e in single.training_log],
                                                       dtype=r0["log"].dtype), rtol=1e-4, atol=1e-6)
    assert any(e["aux"] > 0 for e in single.training_log)  # AuxK ran, over the all-reduced dead set
    resumed = torch.load(tmp_path / "resumed_0.pt", weights_only=True)
    for name in ref:
        assert torch.equal(resumed[name], r0[name]), f"resumed data-parallel run differs: {name}"
    assert torch.equal(torch.load(tmp_path / "resumed_1.pt", weights_only=True)["W_dec"], resumed["W_dec"])
