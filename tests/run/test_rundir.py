"""Run folders: planned without side effects, claimed atomically, never another run's, checked writable and roomy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.run import rundir
from stm3_lightning.run.rundir import (
    RUN_DIR_ENV,
    check_writable,
    claim_run_dir,
    claim_subdir,
    is_worker_process,
    plan_run_dir,
    release_run_dir,
    save_config,
)


def cfg_for(output_dir: str = "", root_dir: str = "outputs"):
    return OmegaConf.create(
        {
            "paths": {"output_dir": output_dir, "root_dir": root_dir},
            "data": {"name": "d"},
            "model": {"name": "m"},
        }
    )


def test_plan_creates_nothing_and_claim_creates(tmp_path: Path) -> None:
    cfg = cfg_for(str(tmp_path / "a" / "b"))
    planned = plan_run_dir(cfg)
    assert planned == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []  # the write probe left nothing behind
    run = claim_run_dir(cfg, planned)
    assert run.is_dir() and os.environ[RUN_DIR_ENV] == str(run.resolve()) and not is_worker_process()
    release_run_dir(run)
    assert RUN_DIR_ENV not in os.environ


def test_default_folders_never_collide(tmp_path: Path) -> None:
    cfg = cfg_for(root_dir=str(tmp_path))
    planned = plan_run_dir(cfg)
    runs = []
    for _ in range(3):  # three runs started in the same second
        runs.append(claim_run_dir(cfg, planned))
        release_run_dir(runs[-1])
    assert len({r.name for r in runs}) == 3 and runs[1].name == f"{planned.name}-1"


@pytest.mark.parametrize(
    "prepare, resuming, message",
    [
        (lambda p: (p.mkdir(), (p / "config.yaml").write_text("a: 1")), False, "already holds a run"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), False, "is not an empty folder"),
        (lambda p: p.write_text("a file"), False, "is not an empty folder"),
        (lambda p: None, True, "holds no run to continue"),
    ],
)
def test_plan_refuses_other_folders(tmp_path: Path, prepare, resuming: bool, message: str) -> None:
    path = tmp_path / "run"
    prepare(path)
    with pytest.raises(ConfigError, match=message):
        plan_run_dir(cfg_for(str(path)), resuming=resuming)


def test_empty_existing_folder_is_accepted(tmp_path: Path) -> None:
    assert plan_run_dir(cfg_for(str(tmp_path))) == tmp_path


def test_unwritable_location_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # works as root too, unlike chmod
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable(blocker / "run")


def test_write_probe_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"Cannot write to .* \(Permission denied\)"):
        check_writable(tmp_path / "run")


def test_full_disk_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    with pytest.raises(ConfigError, match="has 10 MiB free but this run needs about 50 MiB"):
        check_writable(tmp_path / "run")
    check_writable(tmp_path / "run", required_bytes=2**20)


def test_config_files_are_exclusive_and_resumes_numbered(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1})
    assert save_config(cfg, tmp_path, resuming=False, is_worker=False) == tmp_path / "config.yaml"
    with pytest.raises(ConfigError, match="already holds a run"):
        save_config(OmegaConf.create({"a": 2}), tmp_path, resuming=False, is_worker=False)
    assert OmegaConf.load(tmp_path / "config.yaml") == {"a": 1}
    assert save_config(cfg, tmp_path, resuming=True, is_worker=False).name == "config.resume-1.yaml"
    assert save_config(cfg, tmp_path, resuming=True, is_worker=False).name == "config.resume-2.yaml"
    assert save_config(cfg, tmp_path, resuming=True, is_worker=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.resume-1.yaml",
        "config.resume-2.yaml",
        "config.yaml",
    ]


def test_workers_inherit_the_claimed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "rank0"))
    assert is_worker_process()
    assert plan_run_dir(cfg_for(str(tmp_path / "other"))) == tmp_path / "rank0"
    assert claim_subdir(tmp_path, "eval") == tmp_path / "rank0"
    assert not (tmp_path / "eval").exists()


def test_claim_subdir_never_reuses(tmp_path: Path) -> None:
    first = claim_subdir(tmp_path, "best")
    release_run_dir(first)
    second = claim_subdir(tmp_path, "best")
    release_run_dir(second)
    assert (first.name, second.name) == ("best", "best-1")


def test_cluster_rank_above_zero_reuses_rank0_folder(tmp_path, monkeypatch) -> None:
    from stm3_lightning.config.compose import compose
    from stm3_lightning.run.rundir import is_worker_process, plan_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")  # rank 0 got there first
    cfg = compose(["model=linear", f"paths.output_dir={run}"])
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert is_worker_process()
    assert plan_run_dir(cfg) == run
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not is_worker_process()
