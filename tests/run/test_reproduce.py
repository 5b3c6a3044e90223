"""``stm3 reproduce`` / ``stm3 results``: one folder per seed, finished seeds skipped, interrupted ones continued,
a results file rebuilt from run folders alone, and `make reproduce` end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stm3_lightning.cli import main
from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.reporting.ablations import Cell
from stm3_lightning.reporting.protocol_checks import CHECKS
from stm3_lightning.run import reproduce
from stm3_lightning.run.reproduce import check_same_configuration, parse_request, plan_seeds

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=500",
    "data.input_len=12",
    "data.horizon=6",
    "model.num_layers=1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=disabled",
]


def request_args(root: Path, *extra: str) -> list[str]:
    return [
        "data=synthetic",
        f"paths.root_dir={root}",
        f"results_dir={root / 'results'}",
        "eval_seeds=2",
        *TINY,
        *extra,
    ]


class InProcess:
    """Runs each seed's ``python -m stm3_lightning.cli train ...`` in this process and records the commands."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command[4:])
        return main(command[3:])


def trained_for_one_epoch(
    root: Path, seeds: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[InProcess, list[str]]:
    """``stm3 reproduce seeds=<seeds>`` for 1 epoch in ``root`` (no checks), trained in-process; returns the runner
    (its commands) and the request's arguments without ``trainer.max_epochs``."""
    runner = InProcess()
    monkeypatch.setattr(reproduce.subprocess, "call", runner)
    args = [f"seeds={seeds}", *request_args(root), "checks=", "eval_seeds=0"]
    assert main(["reproduce", *args, "trainer.max_epochs=1"]) == 0
    return runner, args


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished seeds and their results file, produced by `stm3 reproduce` (seeds trained in-process)."""
    root = tmp_path_factory.mktemp("reproduce")
    runner = InProcess()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reproduce.subprocess, "call", runner)
        assert main(["reproduce", "seeds=1,2", *request_args(root)]) == 0
    assert len(runner.commands) == 2
    return root


def test_parse_request_defaults_and_pass_through(tmp_path: Path) -> None:
    req = parse_request(["data=pems08", "data.input_len=12"], CHECKS)
    assert req.seeds == [1, 2, 3] and req.extra == ["data.input_len=12"] and req.checks == CHECKS
    req = parse_request(["data=etth1", "seeds=4,5", "variant=repaired", "checks=", "eval_seeds=0"], CHECKS)
    assert req.seeds == [4, 5] and req.variant == "repaired" and req.checks == () and req.eval_seeds == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seeds=1"], "needs data=<dataset>"),
        (["data=pems08", "experiment=reproduce/etth1"], "sets experiment itself"),
        (["data=pems08", "checks=speed"], "Unknown protocol check"),
        (["data=pems08", "variant=a/b"], "names a folder"),
        (["data=pems08", "eval_seeds=x"], "not an integer"),
    ],
)
def test_request_errors_are_one_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_request(args, CHECKS)


def test_seed_folders_are_named_by_the_resolved_window_and_variant(tmp_path: Path) -> None:
    cells = plan_seeds(parse_request(["data=pems08", f"paths.root_dir={tmp_path}", "seeds=1,2"], CHECKS))
    assert [c.run_dir for c in cells] == [tmp_path / "reproduce/pems08-96-96" / f"seed{k}" for k in (1, 2)]
    assert "experiment=reproduce/pems08" in cells[0].args and "seed=1" in cells[0].args
    assert "callbacks.checkpoint.every_n_train_steps=20" in cells[0].args
    args = [
        "data=pems08",
        f"paths.root_dir={tmp_path}",
        "variant=time",
        "data.input_len=12",
        "data.horizon=12",
    ]
    cell = plan_seeds(parse_request([*args, "callbacks.checkpoint.every_n_train_steps=5"], CHECKS))[0]
    assert cell.run_dir == tmp_path / "reproduce/pems08-12-12-time/seed1"
    cfg = compose(cell.args)
    assert cfg.callbacks.checkpoint.every_n_train_steps == 5 and cfg.callbacks.test_every_epoch
    assert cfg.paths.output_dir == str(cell.run_dir) and cfg.seed == 1


def test_a_folder_of_another_configuration_is_refused(tmp_path: Path) -> None:
    cell = plan_seeds(parse_request(["data=synthetic", f"paths.root_dir={tmp_path}", "seeds=1"], CHECKS))[0]
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "config.yaml").write_text(
        OmegaConf.to_yaml(compose([*cell.args, "trainer.max_epochs=7"]))
    )
    check_same_configuration(cell)  # a budget change continues the run
    other = Cell(cell.ablation, 1, cell.run_dir, [*cell.args, "model.contrastive=repaired"])
    with pytest.raises(ConfigError, match="another configuration .*model.contrastive=repaired.*variant="):
        check_same_configuration(other)


def test_reproduce_writes_one_folder_per_seed_and_a_results_file(group: Path) -> None:
    seeds = group / "reproduce" / "synthetic-12-6"
    assert sorted(p.name for p in seeds.iterdir()) == ["seed1", "seed2"]
    doc = json.loads((group / "results" / "synthetic-12-6.json").read_text())
    assert [s["seed"] for s in doc["seeds"]] == [1, 2] and doc["unfinished_seeds"] == []
    assert doc["input_len"] == 12 and doc["horizon"] == 6 and doc["budget"]["budget_limited"]
    assert doc["budget"]["max_epochs"] == 2 and doc["budget"]["release_max_epochs"] == 100
    for s in doc["seeds"]:
        trained = json.loads((seeds / f"seed{s['seed']}" / "test_metrics.json").read_text())
        assert s["test"]["mae"] == trained["overall"]["mae"] and "mae@3" in s["test"] and "mae@6" in s["test"]
        assert s["epochs_run"] == 2 and s["best_epoch"] in (1, 2) and s["wall_time_s"] > 0
        assert s["machine"]["torch"] and s["machine_source"] == "recorded by the run"
    assert doc["mean_std"]["mae"]["n"] == 2 and doc["mean_std"]["mae"]["std"] is not None
    assert doc["command"]["make"].startswith("make reproduce DATA=synthetic SEEDS=1,2 ARGS=")
    assert "data.input_len=12" in doc["command"]["stm3"] and "paths.root_dir" not in doc["command"]["stm3"]
    assert " eval_seeds=2 " in doc["command"]["stm3"] and "checks=" not in doc["command"]["stm3"]
    curve = doc["per_epoch"]["seed1"]
    assert curve["epoch"] == [1, 2] and None not in curve["val_mae"] and None not in curve["test_mae"]
    checks = doc["protocol_checks"]
    assert {r["seed"] for r in checks["checkpoint_selection"]["per_seed"]} == {1, 2}
    assert all("delta_mae" in r for r in checks["checkpoint_selection"]["per_seed"])
    assert all(
        r["release_per_batch"]["rmse"] <= r["global"]["rmse"] + 1e-9
        for r in checks["rmse_averaging"]["per_seed"]
    )
    assert all(len(r["mae"]) == 2 for r in checks["eval_seed_spread"]["per_seed"])
    assert all({"ratio", "window", "ratio_lookback"} <= set(r) for r in checks["split"]["per_seed"])
    assert "noise_off" in checks["router_noise_at_eval"]["per_seed"][0]


def test_finished_seeds_are_skipped(group: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reproduce.subprocess, "call", lambda c: pytest.fail(f"nothing to train, ran {c}"))
    assert main(["reproduce", "seeds=1,2", *request_args(group)]) == 0


def test_results_are_rebuilt_from_the_run_folders_without_training(
    group: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = group / "results" / "synthetic-12-6.json"
    before = json.loads(path.read_text())
    path.unlink()
    monkeypatch.setattr(reproduce.subprocess, "call", lambda c: pytest.fail("stm3 results must not train"))
    assert main(["results", *request_args(group)]) == 0
    assert json.loads(path.read_text()) == before
    table = (group / "results" / "README.md").read_text()
    assert "### synthetic 12→6" in table and "| synthetic-12-6 | 2 |" in table


def test_an_interrupted_seed_is_continued_with_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "interrupted"
    runner = InProcess()
    monkeypatch.setattr(reproduce.subprocess, "call", runner)
    args = ["seeds=3", *request_args(root), "checks=", "eval_seeds=0", "trainer.max_epochs=1"]
    assert main(["reproduce", *args]) == 0
    run = root / "reproduce" / "synthetic-12-6" / "seed3"
    (run / "test_metrics.json").unlink()  # killed after its last checkpoint, before testing
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["reproduce", *[a for a in args if a != "trainer.max_epochs=1"], "trainer.max_epochs=2"]) == 0
    assert runner.commands[-1][0] == f"resume={run}"
    assert (run / "test_metrics.json").is_file() and (run / "config.resume-1.yaml").is_file()
    doc = json.loads((root / "results" / "synthetic-12-6.json").read_text())
    assert doc["seeds"][0]["epochs_run"] == 2 and doc["seeds"][0]["max_epochs"] == 2
    assert "seeds=3 checks= eval_seeds=0 " in doc["command"]["stm3"]  # which protocol checks ran


@pytest.mark.slow
def test_make_reproduce_then_make_results(tmp_path: Path) -> None:
    """`make reproduce DATA=synthetic SEEDS=1,2 ARGS=<tiny>` in a fresh folder, then `make results`."""
    env = {k: v for k, v in os.environ.items() if k != "STM3_RUN_DIR"}
    make = ["make", "-s", "-f", str(REPO / "Makefile"), f"VENV={REPO / '.venv'}"]
    tiny = " ".join([*TINY, "checks=", "eval_seeds=2", f"results_dir={tmp_path / 'results'}"])
    proc = subprocess.run(
        [*make, "reproduce", "DATA=synthetic", "SEEDS=1,2", f"ARGS={tiny}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 seed(s) trained, 0 already done, 0 failed" in proc.stdout
    assert sorted(
        p.parent.name for p in (tmp_path / "outputs/reproduce/synthetic-12-6").glob("*/test_metrics.json")
    ) == [
        "seed1",
        "seed2",
    ]
    (tmp_path / "results" / "README.md").unlink()
    proc = subprocess.run(
        [*make, "results", f"ARGS=results_dir={tmp_path / 'results'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synthetic-12-6" in (tmp_path / "results" / "README.md").read_text()


def test_collecting_a_new_seed_keeps_the_committed_seeds_whose_folders_are_gone(
    group: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh checkout holds the committed results file but only the run folder of the seed trained since."""
    import shutil

    name = "synthetic-12-6"
    before = json.loads((group / "results" / f"{name}.json").read_text())
    root = tmp_path / "checkout"
    shutil.copytree(group / "reproduce" / name / "seed2", root / "reproduce" / name / "seed2")
    (root / "results").mkdir()
    shutil.copy(group / "results" / f"{name}.json", root / "results" / f"{name}.json")
    monkeypatch.setattr(reproduce.subprocess, "call", lambda c: pytest.fail("stm3 results must not train"))
    assert main(["results", *request_args(root)]) == 0
    doc = json.loads((root / "results" / f"{name}.json").read_text())
    old1, new1 = before["seeds"][0], doc["seeds"][0]
    assert [s["seed"] for s in doc["seeds"]] == [1, 2]
    assert new1["record_source"].startswith("kept from the committed results file")
    assert doc["seeds"][1]["record_source"] == "run folder" and doc["seeds"][1]["run_dir"].startswith(
        str(root)
    )
    assert {k: v for k, v in new1.items() if k != "record_source"} == {
        k: v for k, v in old1.items() if k != "record_source"
    }
    assert doc["mean_std"] == before["mean_std"] and doc["per_epoch"] == before["per_epoch"]
    assert doc["protocol_checks"] == before["protocol_checks"] and doc["commands_differ"] == []


def test_a_results_file_that_cannot_be_kept_is_refused_untouched(
    group: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    name = "synthetic-12-6"
    root = tmp_path / "checkout"
    shutil.copytree(group / "reproduce" / name / "seed2", root / "reproduce" / name / "seed2")
    (root / "results").mkdir()
    doc = json.loads((group / "results" / f"{name}.json").read_text())
    del doc["per_epoch"]["seed1"]
    path = root / "results" / f"{name}.json"
    path.write_text(json.dumps(doc))
    assert main(["results", *request_args(root)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and error.count("\n") == 0
    assert (
        "cannot be kept beside the new seeds (KeyError: 'seed1')" in error and "move the file aside" in error
    )
    assert json.loads(path.read_text()) == doc
    path.write_text("{not json")
    assert main(["results", *request_args(root)]) == 2
    assert "cannot be kept beside the new seeds (JSONDecodeError" in capsys.readouterr().err
    assert path.read_text() == "{not json"


def test_a_larger_budget_continues_a_finished_seed_that_its_budget_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "extend"
    runner, args = trained_for_one_epoch(root, "4", monkeypatch)
    run = root / "reproduce" / "synthetic-12-6" / "seed4"
    first = json.loads((run / "test_metrics.json").read_text())
    assert main(["reproduce", *args, "trainer.max_epochs=3", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "would continue (dry run) to 3" in out and f"stm3 train resume={run} " in out
    assert "done already" not in out and len(runner.commands) == 1
    assert sorted(p.name for p in run.glob("test_metrics*.json")) == ["test_metrics.json"]
    assert main(["reproduce", *args, "trainer.max_epochs=3"]) == 0
    assert "ran its budget of 1 epochs; continuing to 3 from last.ckpt" in capsys.readouterr().out
    assert runner.commands[-1][0] == f"resume={run}" and len(runner.commands) == 2
    assert json.loads((run / "test_metrics.max_epochs-1.json").read_text()) == first
    doc = json.loads((root / "results" / "synthetic-12-6.json").read_text())
    assert doc["seeds"][0]["epochs_run"] == 3 and doc["seeds"][0]["max_epochs"] == 3
    assert doc["per_epoch"]["seed4"]["epoch"] == [1, 2, 3]
    assert main(["reproduce", *args, "trainer.max_epochs=3"]) == 0  # finished at 3: nothing to do
    assert main(["reproduce", *args, "trainer.max_epochs=2"]) == 0  # a smaller budget never reopens
    assert len(runner.commands) == 2 and (run / "test_metrics.json").is_file()


def test_a_seed_that_early_stopping_ended_is_not_continued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stm3_lightning.reporting import reproduction

    root = tmp_path / "stopped"
    runner, args = trained_for_one_epoch(root, "5", monkeypatch)
    monkeypatch.setattr(reproduction, "stopped_by", lambda *a: "early stopping")
    assert main(["reproduce", *args, "trainer.max_epochs=3"]) == 0
    assert (
        "finished after 1 epochs, where early stopping ended it, so trainer.max_epochs=3 does not continue it"
        in (capsys.readouterr().out)
    )
    assert len(runner.commands) == 1
    assert (root / "reproduce" / "synthetic-12-6" / "seed5" / "test_metrics.json").is_file()


def test_a_seed_without_last_checkpoint_refuses_the_whole_request_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 6 could continue, seed 7 cannot: nothing is renamed and nothing trains."""
    root = tmp_path / "nolast"
    runner, args = trained_for_one_epoch(root, "6,7", monkeypatch)
    group_dir = root / "reproduce" / "synthetic-12-6"
    (group_dir / "seed7" / "checkpoints" / "last.ckpt").unlink()
    assert main(["reproduce", *args, "trainer.max_epochs=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "has no checkpoints/last.ckpt to continue to 3 from" in error
    assert len(runner.commands) == 2
    for seed in (6, 7):
        assert sorted(p.name for p in (group_dir / f"seed{seed}").glob("test_metrics*.json")) == [
            "test_metrics.json"
        ]


def test_a_failed_continuation_keeps_the_earlier_results_and_is_resumed_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "failed"
    runner, args = trained_for_one_epoch(root, "8", monkeypatch)
    run = root / "reproduce" / "synthetic-12-6" / "seed8"
    results = root / "results" / "synthetic-12-6.json"
    before = results.read_text()
    monkeypatch.setattr(reproduce.subprocess, "call", lambda c: 137)  # killed while continuing
    main(["reproduce", *args, "trainer.max_epochs=3"])
    assert results.read_text() == before and (run / "test_metrics.max_epochs-1.json").is_file()
    monkeypatch.setattr(reproduce.subprocess, "call", runner)
    assert main(["reproduce", *args, "trainer.max_epochs=3"]) == 0
    assert runner.commands[-1][0] == f"resume={run}"
    assert json.loads(results.read_text())["seeds"][0]["epochs_run"] == 3


def test_earlier_results_are_never_overwritten(tmp_path: Path) -> None:
    assert reproduce._kept_name(tmp_path, 5).name == "test_metrics.max_epochs-5.json"
    (tmp_path / "test_metrics.max_epochs-5.json").write_text("{}")
    assert reproduce._kept_name(tmp_path, 5).name == "test_metrics.max_epochs-5.2.json"
    (tmp_path / "test_metrics.max_epochs-5.2.json").write_text("{}")
    assert reproduce._kept_name(tmp_path, 5).name == "test_metrics.max_epochs-5.3.json"


def test_a_committed_seed_of_another_configuration_is_refused_before_training(
    group: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committed file's seed 1 was trained with model.contrastive=repaired; the new seeds are faithful."""
    name = "synthetic-12-6"
    root = tmp_path / "checkout"
    (root / "results").mkdir(parents=True)
    doc = json.loads((group / "results" / f"{name}.json").read_text())
    doc["seeds"] = doc["seeds"][:1]
    doc["command"]["stm3"] += " model.contrastive=repaired"
    path = root / "results" / f"{name}.json"
    path.write_text(json.dumps(doc))
    text = path.read_text()
    monkeypatch.setattr(reproduce.subprocess, "call", lambda c: pytest.fail(f"must not train, ran {c}"))
    assert main(["reproduce", "seeds=3", *request_args(root)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.count("\n") == 0 and "holds seed 1 of another configuration (model.contrastive unset)" in error
    )
    assert "VARIANT=<label>" in error and path.read_text() == text
