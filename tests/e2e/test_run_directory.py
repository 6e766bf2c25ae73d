"""A run directory nobody can corrupt: a copied run resumes from its own newest checkpoint and prunes it,
resume=false never overwrites a run, a folder alignlab did not make is never written into, a second process
is locked out, a failed or killed checkpoint write leaves the earlier ones intact, and a changed optimizer setting
really applies on resume."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.training.artifacts import read_metrics
from alignlab.training.checkpoints import AtomicCheckpointIO, resume_checkpoint
from alignlab.training.run_directory import RunLock
from tests.hydra_app import cli, comparable, run_inprocess, same_lora
from tests.e2e.test_checkpoints import files_in

QUIET = ("logger=none", "checkpoint.keep=2")


def test_a_copied_run_resumes_from_its_own_last_checkpoint_and_prunes_old_rounds(tmp_path):
    straight, original, copy = tmp_path / "straight", tmp_path / "original", tmp_path / "copy"
    rows = run_inprocess(straight, "trainer.max_epochs=4", *QUIET)
    run_inprocess(original, "trainer.max_epochs=2", *QUIET)
    shutil.copytree(original, copy)
    assert comparable(run_inprocess(copy, "trainer.max_epochs=4", *QUIET)) == comparable(rows)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [
        "last.ckpt", "round-0002.ckpt", "round-0003.ckpt"]  # no last-v1.ckpt; round-0000/0001 pruned
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)["round_index"] == 4
    assert same_lora(straight, copy)


def test_resume_false_on_an_existing_run_is_refused_and_writes_nothing(tmp_path):
    run_inprocess(tmp_path, "trainer.max_epochs=1", *QUIET)
    files = files_in(tmp_path)
    with pytest.raises(AlignlabError, match="already holds a run, which resume=false would overwrite; rerun with "
                                            "resume=true"):
        run_inprocess(tmp_path, "trainer.max_epochs=1", "resume=false", *QUIET)
    assert files_in(tmp_path) == files


def test_a_folder_alignlab_did_not_make_is_refused_before_hydra_writes_to_it(tmp_path):
    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "metrics.jsonl").write_text('{"epoch": 3, "loss": 0.1}\n')  # someone else's metrics
    (mine / "plots" / "alignment.png").write_bytes(b"my figure")
    files = files_in(mine)
    result = cli("model=tiny", "logger=none", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"alignlab: error: hydra.run.dir={mine} holds files alignlab did not write "
                                     "(e.g. metrics.jsonl); pick a new or empty directory")
    assert files_in(mine) == files and sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl", "plots"]


def test_a_second_process_in_a_running_directory_is_locked_out(tmp_path):
    with RunLock(tmp_path):  # as a run in progress holds it
        marker = (tmp_path / ".alignlab").read_text()
        with pytest.raises(AlignlabError, match="is in use by another alignlab run; wait for it to end"):
            run_inprocess(tmp_path, "trainer.max_epochs=1", *QUIET)
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / ".alignlab").read_text() == marker
    run_inprocess(tmp_path, "trainer.max_epochs=1", *QUIET)  # released: the run starts


def test_a_full_disk_during_a_checkpoint_write_leaves_the_earlier_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"round_index": 1}, path)
    earlier = path.read_bytes()

    def full_disk(obj, file):
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(AlignlabError, match="could not write .*last.ckpt \\(No space left on device\\); the run's "
                                            "earlier checkpoints are intact"):
        AtomicCheckpointIO().save_checkpoint({"round_index": 2}, path)
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    import alignlab
    from alignlab.training.checkpoints import AtomicCheckpointIO

    def killed(obj, file):  # half the bytes reach the disk, then the process dies
        file.write(b"half a checkpoint")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = killed
    AtomicCheckpointIO().save_checkpoint({"round_index": 2, "state_dict": {}}, sys.argv[1])
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_earlier_checkpoint_to_resume_from(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"round_index": 1, "state_dict": {"w": torch.zeros(2, 3)}}, path)
    earlier = path.read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert path.read_bytes() == earlier  # the half-written bytes went to last.ckpt.tmp, which resume ignores
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.tmp"]
    resumable = resume_checkpoint(tmp_path)
    assert (resumable.path, resumable.rounds, resumable.shapes) == (path, 1, {"w": (2, 3)})
    AtomicCheckpointIO().save_checkpoint({"round_index": 2, "state_dict": {}}, path)  # the next write replaces both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] and resume_checkpoint(tmp_path).rounds == 2


def test_a_learning_rate_changed_on_resume_is_the_one_that_trains(tmp_path):
    run_inprocess(tmp_path, "trainer.max_epochs=1", "optimizer.lr=1e-3", *QUIET)
    rows = run_inprocess(tmp_path, "trainer.max_epochs=2", "optimizer.lr=2.5e-4", "optimizer.weight_decay=0.5",
                         *QUIET)
    assert [r["round"] for r in rows] == [0, 1] and read_metrics(tmp_path / "metrics.jsonl") == rows
    (group,) = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0][
        "param_groups"]
    assert (group["lr"], group["weight_decay"]) == (2.5e-4, 0.5)
