"""``stm3 train -m``: every job of the grid in its own folder, a summary of all, failures isolated, sweeps resumable.

Most tests run the grid with a fake job runner that writes what a finished (or failed) run leaves behind; the slow
tests run real ``stm3 train`` processes through the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from stm3_lightning.cli import main
from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.multirun.command import SUMMARY, multirun
from stm3_lightning.reporting.report_runs import collect_local

TINY = [
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=600",
    "data.input_len=12",
    "data.horizon=3",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=none",
]


def value(command: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in command if a.startswith(f"{key}=")), None)


def fake_runner(calls: list[list[str]], fails: Callable[[list[str]], bool] = lambda c: False):
    """A job runner that records the command and leaves a finished run (or, when ``fails``, a started one)."""

    def run(command: list[str]) -> int:
        calls.append(command)
        folder = Path(value(command, "paths.output_dir") or value(command, "resume") or "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text("seed: 1\n")
        if fails(command):
            return 3
        (folder / "test_metrics.json").write_text("{}")
        return 0

    return run


def sweep_dir_of(root: Path) -> Path:
    (found,) = (root / "multirun").iterdir()
    return found


def summary(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / SUMMARY).read_text())["jobs"]


def test_grid_runs_every_job_in_its_own_folder_and_summarises(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    calls: list[list[str]] = []
    args = [
        "seed=1,2",
        "model.contrastive=released,repaired",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=1",
    ]
    assert multirun(args, fake_runner(calls)) == 0
    sweep = sweep_dir_of(tmp_path)
    assert [value(c, "paths.output_dir") for c in calls] == [str(sweep / str(k)) for k in range(4)]
    assert [(value(c, "seed"), value(c, "model.contrastive")) for c in calls] == [
        ("1", "released"),
        ("1", "repaired"),
        ("2", "released"),
        ("2", "repaired"),
    ]
    assert [value(c, "logger.wandb.group") for c in calls] == [
        "model.contrastive=released",
        "model.contrastive=repaired",
    ] * 2
    assert all(value(c, "trainer.max_epochs") == "1" for c in calls)
    jobs = summary(sweep)
    assert [j["status"] for j in jobs] == ["done"] * 4
    assert jobs[1]["values"] == {"seed": "1", "model.contrastive": "repaired"}
    out = capsys.readouterr().out
    assert f"multirun: 4 jobs in {sweep}: 4 done" in out and f"stm3 report runs={sweep}" in out
    for k in range(4):
        assert f"{sweep / str(k)}" in out


def test_a_failed_job_does_not_stop_the_others_and_the_exit_code_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    calls: list[list[str]] = []
    runner = fake_runner(calls, lambda c: value(c, "seed") == "1" and value(c, "model.agccn") == "false")
    assert multirun(["seed=1,2", "model.agccn=true,false", f"paths.root_dir={tmp_path}"], runner) == 1
    assert len(calls) == 4
    assert [j["status"] for j in summary(sweep_dir_of(tmp_path))] == ["done", "failed", "done", "done"]
    assert "failed (exit 3)" in capsys.readouterr().out


def test_fail_fast_stops_at_the_first_failure(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    runner = fake_runner(calls, lambda c: value(c, "seed") == "2")
    code = multirun(["seed=1,2,3", "launcher.fail_fast=true", f"paths.root_dir={tmp_path}"], runner)
    assert code == 1 and len(calls) == 2
    assert [j["status"] for j in summary(sweep_dir_of(tmp_path))] == ["done", "failed", "not run"]


def test_the_same_sweep_continues_and_another_one_is_refused(tmp_path: Path) -> None:
    args = ["seed=1,2", f"launcher.sweep_dir={tmp_path / 'sweep'}", f"paths.root_dir={tmp_path}"]
    first: list[list[str]] = []
    assert multirun(args, fake_runner(first, lambda c: value(c, "seed") == "2")) == 1
    again: list[list[str]] = []
    assert multirun(args, fake_runner(again)) == 0
    assert again == [first[1][:4] + [f"resume={tmp_path / 'sweep' / '1'}"]]
    assert [j["status"] for j in summary(tmp_path / "sweep")] == ["done already", "done"]
    with pytest.raises(ConfigError, match="holds another sweep"):
        multirun(["seed=1,3", *args[1:]], fake_runner([]))


def test_lists_are_single_values_and_sweeps_of_lists_work(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    assert multirun(["model.scales=[1,3,5],[1]", f"paths.root_dir={tmp_path}"], fake_runner(calls)) == 0
    assert [value(c, "model.scales") for c in calls] == ["[1,3,5]", "[1]"]
    assert list(compose(calls[0][4:]).model.scales) == [1, 3, 5]
    calls.clear()
    assert multirun(["model.scales=[1,3,5]", f"paths.root_dir={tmp_path / 'one'}"], fake_runner(calls)) == 0
    assert len(calls) == 1 and value(calls[0], "logger.wandb.group") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.max_epochs=1,x"], "Job #1 trainer.max_epochs=x: Invalid value for 'trainer.max_epochs'"),
        (["paths.output_dir=/x"], "does not take paths.output_dir"),
        (["resume=/x"], "does not take resume"),
        (
            ["launcher=submitit_local", "launcher.nodes=2"],
            "launcher.nodes is a key of launcher=submitit_slurm",
        ),
    ],
)
def test_bad_grids_fail_in_one_sentence_before_anything_is_created(
    tmp_path: Path, args: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        multirun([*args, f"paths.root_dir={tmp_path}"], fake_runner([]))
    assert list(tmp_path.iterdir()) == []


def test_missing_submitit_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    with pytest.raises(
        ConfigError, match=r'needs submitit, an optional extra: install it with pip install -e "\.\[slurm\]"'
    ):
        multirun(["seed=1,2", "launcher=submitit_local", f"paths.root_dir={tmp_path}"])
    assert list(tmp_path.iterdir()) == []


def test_cli_flags(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "launcher=submitit_local", "seed=1"]) == 2
    assert "add -m" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "-m", "ckpt=x"])
    assert exc.value.code == 2 and "-m (multirun) applies to `stm3 train`" in capsys.readouterr().err


@pytest.mark.slow
def test_multirun_through_the_cli_trains_each_job_and_feeds_the_report(tmp_path: Path) -> None:
    args = ["train", "-m", "model=persistence,linear", "seed=1,2", *TINY, f"paths.root_dir={tmp_path}"]
    assert main(args) == 0
    sweep = sweep_dir_of(tmp_path)
    assert all((sweep / str(k) / "test_metrics.json").is_file() for k in range(4))
    records = collect_local(sweep)
    assert sorted((r.group, r.seed) for r in records) == [
        ("model=linear", 1),
        ("model=linear", 2),
        ("model=persistence", 1),
        ("model=persistence", 2),
    ]
