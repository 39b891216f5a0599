"""Saves are atomic as a folder: a crash leaves exactly the old SAE or exactly the new one, concurrent writers
(processes and threads, save_pretrained and convert) end with one writer's complete SAE, and what a user
keeps in the destination that is not ours survives.

Every writer encodes its id in the config (``hook_name``) *and* in every weight (and in ``sparsity`` when it
writes one), so a folder assembled from two writers is caught by comparing them.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hub import SAE, SAEConfig, convert
from sae_hub.errors import ConfigError
from sae_hub.files import atomic_folder, is_temp_name

REPO = Path(__file__).resolve().parent.parent
D_IN, D_SAE = 32, 1024

def make_sae(i: int, d_in: int, d_sae: int) -> SAE:
    """An SAE whose every number, and whose hook name, say ``i``."""
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae, hook_name=f"blocks.{i}.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.fill_(float(i))
    return sae


# the child processes get the same definition
MAKE_SAE = "import torch\nfrom sae_hub import SAE, SAEConfig\n\n" + inspect.getsource(make_sae)


def writer_id(folder: Path) -> int:
    """The id of the one writer whose SAE ``folder`` holds; fails if its parts come from different writers."""
    sae = SAE.load_from_disk(folder)
    i = int(sae.cfg.hook_name.split(".")[1])
    for name, p in sae.state_dict().items():
        assert torch.all(p == i), f"{folder}: cfg.json is writer {i}'s but {name} is not"
    sparsity = folder / "sparsity.safetensors"
    if sparsity.exists():
        assert torch.all(load_file(sparsity)["sparsity"] == -i), f"{folder}: sparsity is not writer {i}'s"
    return i


def hidden_leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def seed_destination(folder: Path) -> None:
    """An existing SAE (id 99, with sparsity) plus things a user keeps there that are not ours."""
    make_sae(99, D_IN, 16).save_pretrained(folder, sparsity=torch.full((16,), -99.0))
    (folder / "notes.md").write_text("my notes")
    make_sae(100, D_IN, 8).save_pretrained(folder / "layer_1")  # another SAE inside this folder
    (folder / "layer_1" / "README").write_text("inner")


def check_survivors(folder: Path) -> None:
    assert (folder / "notes.md").read_text() == "my notes"
    assert writer_id(folder / "layer_1") == 100
    assert (folder / "layer_1" / "README").read_text() == "inner"


def run_child(code: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", MAKE_SAE + textwrap.dedent(code), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------- crashes

KILL_CHILD = '''
    import os, sys
    import sae_hub.files, sae_hub.sae
    from sae_hub import convert

    dst, point = sys.argv[1], sys.argv[2]
    die = lambda *a, **k: os._exit(9)
    if point.endswith("after_weights"):  # the weights are written, cfg.json is next
        sae_hub.sae.SAE._save_config = die
    elif point == "before_swap":  # the whole new folder is written
        sae_hub.files._swap_into_place = die
    new = make_sae(2, 32, 1024)
    if point.startswith("convert"):
        new.save_pretrained(dst + ".src")
        convert(dst + ".src", dst, progress=False)
    else:
        new.save_pretrained(dst, sparsity=torch.full((1024,), -2.0))
'''


@pytest.mark.parametrize("point", ["after_weights", "before_swap", "convert_after_weights"])
def test_a_kill_mid_save_leaves_exactly_the_old_sae(tmp_path, point):
    dst = tmp_path / "sae"
    seed_destination(dst)
    out = run_child(KILL_CHILD, str(dst), point)
    assert out.returncode == 9, out.stderr
    assert writer_id(dst) == 99
    check_survivors(dst)
    assert (dst / "sparsity.safetensors").exists()


def test_a_kill_at_a_random_moment_leaves_the_old_or_the_new_sae(tmp_path):
    """SIGKILL a process that keeps saving two different SAEs in turn over one folder."""
    dst = tmp_path / "sae"
    seed_destination(dst)
    code = '''
        import sys
        a, b = make_sae(1, 32, 1024), make_sae(2, 32, 1024)
        print("ready", flush=True)
        while True:
            a.save_pretrained(sys.argv[1], sparsity=torch.full((1024,), -1.0))
            b.save_pretrained(sys.argv[1])
    '''
    rng = random.Random(0)
    seen = set()
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", MAKE_SAE + textwrap.dedent(code), str(dst)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            child.kill()
            child.wait()
        seen.add(writer_id(dst))
        check_survivors(dst)
    assert seen <= {1, 2, 99}


def test_a_python_exception_mid_save_leaves_the_old_sae_and_no_temp_folder(tmp_path, monkeypatch):
    dst = tmp_path / "sae"
    seed_destination(dst)

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SAE, "_save_config", fail)
    with pytest.raises(KeyboardInterrupt):
        make_sae(2, D_IN, D_SAE).save_pretrained(dst)
    monkeypatch.undo()
    assert writer_id(dst) == 99
    check_survivors(dst)
    assert hidden_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- concurrency

WRITER = '''
    import sys, time
    from pathlib import Path
    from sae_hub import convert

    i, root, rounds = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    sae = make_sae(i, 32, 1024)
    mode = "convert" if i >= 6 else "save"
    if mode == "convert":
        sae.save_pretrained(root / f"src{i}")
    sparsity = torch.full((1024,), -float(i)) if i % 2 == 0 else None
    (root / f"ready{i}").touch()
    while not (root / "go").exists():
        time.sleep(0.001)
    for r in range(rounds):
        if mode == "convert":
            convert(root / f"src{i}", root / f"round{r}", progress=False)
        else:
            sae.save_pretrained(root / f"round{r}", sparsity=sparsity)
'''


def check_round(folder: Path, savers: range, converters: range = range(0)) -> int:
    """One writer's complete SAE; with sparsity exactly when that writer saved one (even save_pretrained ids)."""
    i = writer_id(folder)
    assert i in savers or i in converters
    wrote_sparsity = i % 2 == 0 and i in savers
    assert (folder / "sparsity.safetensors").exists() == wrote_sparsity, i
    check_survivors(folder)
    return i


def test_eight_processes_saving_and_converting_to_one_folder_leave_one_complete_sae(tmp_path):
    rounds = 8
    for r in range(rounds):
        seed_destination(tmp_path / f"round{r}")
    children = [subprocess.Popen([sys.executable, "-c", MAKE_SAE + textwrap.dedent(WRITER), str(i), str(tmp_path),
                                  str(rounds)], cwd=REPO, stderr=subprocess.PIPE, text=True) for i in range(8)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(8)):
            assert time.monotonic() < deadline and all(c.poll() is None for c in children)
            time.sleep(0.01)
        (tmp_path / "go").touch()
        errors = [c.communicate(timeout=180)[1] for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    assert [c.returncode for c in children] == [0] * 8, errors
    winners = [check_round(tmp_path / f"round{r}", range(6), range(6, 8)) for r in range(rounds)]
    assert hidden_leftovers(tmp_path) == []
    print("winners", winners)


def test_eight_threads_saving_to_one_folder_leave_one_complete_sae(tmp_path):
    rounds = 8
    for r in range(rounds):
        seed_destination(tmp_path / f"round{r}")
    saes = [make_sae(i, D_IN, D_SAE) for i in range(8)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=60)
                sparsity = torch.full((D_SAE,), -float(i)) if i % 2 == 0 else None
                saes[i].save_pretrained(tmp_path / f"round{r}", sparsity=sparsity)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    for r in range(rounds):
        check_round(tmp_path / f"round{r}", range(8))
    assert hidden_leftovers(tmp_path) == []


def test_eight_threads_converting_to_one_folder_leave_one_complete_sae(tmp_path):
    for i in range(8):
        make_sae(i, D_IN, D_SAE).save_pretrained(tmp_path / f"src{i}")
    dst = tmp_path / "out"
    seed_destination(dst)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                barrier.wait(timeout=60)
                convert(tmp_path / f"src{i}", dst, progress=False)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert writer_id(dst) in range(8) and not (dst / "sparsity.safetensors").exists()
    check_survivors(dst)
    assert hidden_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- what survives


def test_a_save_replaces_only_our_files(tmp_path):
    dst = tmp_path / "sae"
    seed_destination(dst)
    os.symlink("notes.md", dst / "link")
    (dst / "nested" / "deeper").mkdir(parents=True)
    (dst / "nested" / "deeper" / "cfg.json").write_text("{}")  # our file names, but not in our folder
    os.chmod(dst, 0o750)
    make_sae(3, D_IN, D_SAE).save_pretrained(dst)  # no sparsity this time
    assert writer_id(dst) == 3
    assert not (dst / "sparsity.safetensors").exists()  # the old one described the old SAE
    check_survivors(dst)
    assert os.readlink(dst / "link") == "notes.md"
    assert (dst / "nested" / "deeper" / "cfg.json").read_text() == "{}"
    assert (dst.stat().st_mode & 0o777) == 0o750
    assert hidden_leftovers(tmp_path) == []


def test_the_fallback_swap_without_renameat2_keeps_the_same_guarantees(tmp_path, monkeypatch):
    import sae_hub.files as files

    monkeypatch.setattr(files, "_renameat2", lambda: None)  # as on macOS / Windows
    dst = tmp_path / "sae"
    make_sae(1, D_IN, D_SAE).save_pretrained(dst)  # nothing there yet: a plain rename
    seed_destination(tmp_path / "other")
    for name in ("notes.md", "layer_1"):
        os.rename(tmp_path / "other" / name, dst / name)
    make_sae(2, D_IN, D_SAE).save_pretrained(dst, sparsity=torch.full((D_SAE,), -2.0))
    assert writer_id(dst) == 2
    check_survivors(dst)


def test_a_symlinked_destination_replaces_the_folder_it_points_to(tmp_path):
    real = tmp_path / "real"
    seed_destination(real)
    os.symlink(real, tmp_path / "link")
    make_sae(4, D_IN, D_SAE).save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and writer_id(tmp_path / "link") == 4 and writer_id(real) == 4
    check_survivors(real)


def test_a_destination_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a folder") as e:
        make_sae(1, D_IN, D_SAE).save_pretrained(tmp_path / "f")
    assert e.value.field == "path" and (tmp_path / "f").read_text() == "x"
    assert hidden_leftovers(tmp_path) == []


def test_leftover_temp_folders_are_hidden_and_ignored_by_convert(tmp_path):
    """What a hard kill before the swap leaves behind: a hidden, uniquely named folder (here holding a
    complete SAE) that folder conversion never picks up."""
    lab = tmp_path / "lab"
    make_sae(1, D_IN, D_SAE).save_pretrained(lab / "layer_0")
    leftover = lab / f".layer_1.tmp-{os.getpid()}-{threading.get_ident()}-0123abcd"
    make_sae(2, D_IN, D_SAE).save_pretrained(leftover)
    assert is_temp_name(leftover.name)
    written = convert(lab, tmp_path / "native", progress=False)
    assert [p.relative_to(tmp_path / "native").as_posix() for p in written] == ["layer_0"]


def test_temp_names_are_unique_per_thread(tmp_path):
    """Two threads of one process never share a temp name (they did when it was made from the pid alone)."""
    names: set[str] = set()
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(50):
            with atomic_folder(tmp_path / "x", replaces=()) as tmp, lock:
                assert tmp.name not in names
                names.add(tmp.name)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 200 and all(is_temp_name(n) for n in names)
    assert hidden_leftovers(tmp_path) == []


def test_eight_threads_writing_one_file_never_collide(tmp_path):
    """The single-file writers (used by the activation cache and feature stats too) once named their temp file
    after the pid alone, so threads of one process renamed each other's half-written files away."""
    from sae_hub.files import write_json_atomic, write_safetensors_atomic

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                barrier.wait(timeout=60)
                write_json_atomic(tmp_path / "state.json", {"writer": i, "pad": [i] * 2000})
                write_safetensors_atomic(tmp_path / "t.safetensors", {"x": torch.full((50_000,), float(i))})
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["pad"] == [state["writer"]] * 2000
    x = load_file(tmp_path / "t.safetensors")["x"]
    assert torch.all(x == x[0])
    assert hidden_leftovers(tmp_path) == []
