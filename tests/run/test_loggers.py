"""Loggers: W&B never blocks or breaks a run (unreachable, bad key, silent server); CSV history survives a resume."""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from stm3_lightning.cli import main
from stm3_lightning.config.compose import compose
from stm3_lightning.config.schema import WandbConfig
from stm3_lightning.run.loggers import (
    WANDB_ID_FILE,
    continue_csv_log,
    model_variant,
    resolve_wandb_mode,
    run_identity,
    wandb_reachable,
    wandb_run_id,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
TINY = [
    "model=linear",
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=700",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=online",
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def online_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """W&B asked to log online with a fake key; ``WANDB_MODE`` is restored after the test (WandbLogger sets it).

    ``wandb.teardown()`` around the test: wandb caches the base URL of the first run of a process.
    """
    import wandb

    wandb.teardown()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    yield monkeypatch
    wandb.teardown()


@pytest.fixture
def unauthorized_server() -> Iterator[str]:
    """A loopback HTTP server that answers 401 to every request (a wrong API key)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = b'{"errors": [{"message": "user is not logged in"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_online(tmp_path: Path) -> tuple[int, float, Path]:
    out = tmp_path / "run"
    start = time.monotonic()
    code = main(["train", *TINY, f"paths.output_dir={out}"])
    return code, time.monotonic() - start, out


def test_unreachable_server_trains_offline_within_seconds(
    online_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    code, elapsed, out = run_online(tmp_path)
    assert code == 0 and (out / "test_metrics.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert elapsed < 30  # a hung W&B connection would take init_timeout (30 s) or more


def test_rejected_api_key_trains_offline(
    online_env: pytest.MonkeyPatch, unauthorized_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    online_env.setenv("WANDB_BASE_URL", unauthorized_server)
    assert wandb_reachable()  # the server answers, so only wandb.init can find out the key is bad
    with caplog.at_level("WARNING", logger="stm3_lightning.run.loggers"):
        code, elapsed, out = run_online(tmp_path)
    assert "could not start an online run" in caplog.text
    assert code == 0 and (out / "test_metrics.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert elapsed < 30  # a hung W&B connection would take init_timeout (30 s) or more


def test_closed_port_is_unreachable_at_once(online_env: pytest.MonkeyPatch) -> None:
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"
    assert time.monotonic() - start < 2


def test_silent_server_is_unreachable_after_the_timeout(online_env: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection but never answers (firewall, hung proxy) must not hang the run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # connections complete in the backlog, nobody answers
        online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        assert not wandb_reachable(timeout=0.5)
        assert time.monotonic() - start < 3


def test_no_credentials_means_offline(online_env: pytest.MonkeyPatch) -> None:
    online_env.delenv("WANDB_API_KEY")
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"
    assert resolve_wandb_mode(WandbConfig(mode="disabled")) == "disabled"
    online_env.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(WandbConfig(mode="online")) == "offline"


def test_wandb_run_id_is_read_from_the_run_folder(tmp_path: Path) -> None:
    fresh = {wandb_run_id(tmp_path, resuming=True) for _ in range(3)}  # no stored id yet: new ones
    assert len(fresh) == 3 and all(len(i) == 8 and i.isalnum() for i in fresh)
    (tmp_path / WANDB_ID_FILE).write_text("abc123\n")
    assert wandb_run_id(tmp_path, resuming=True) == "abc123"
    assert wandb_run_id(tmp_path, resuming=False) != "abc123"


def test_resumed_csv_keeps_history_up_to_the_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss"])
        writer.writeheader()
        writer.writerows({"epoch": 0, "step": s, "train/loss": 10 - s} for s in range(0, 10, 2))
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    continue_csv_log(logger, until_step=5)
    logger.log_metrics({"train/loss": 4.5, "val/loss": 3.0}, step=6)
    logger.save()
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    assert rows[0]["train/loss"] == "10" and rows[-1]["val/loss"] == "3.0"


def test_config_reaches_wandb_resolved(online_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The offline logger receives the resolved config (no interpolation strings)."""
    from stm3_lightning.run.loggers import build_wandb_logger

    online_env.setenv("WANDB_MODE", "offline")
    cfg = compose(["model=linear", "logger.wandb.mode=offline", "paths.root_dir=${paths.data_dir}/x"])
    logger = build_wandb_logger(cfg, tmp_path)
    assert (
        logger is not None and logger._wandb_init["config"]["paths"]["root_dir"] == f"{cfg.paths.data_dir}/x"
    )
    wandb_finish()


def test_resumed_run_continues_its_wandb_run(online_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from stm3_lightning.run.loggers import build_wandb_logger

    online_env.setenv("WANDB_MODE", "offline")
    cfg = compose(["model=linear", "logger.wandb.mode=offline"])
    first = build_wandb_logger(cfg, tmp_path)._wandb_init["id"]
    wandb_finish()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    assert build_wandb_logger(cfg, tmp_path, resuming=True)._wandb_init["id"] == first
    wandb_finish()
    assert build_wandb_logger(cfg, tmp_path, resuming=False)._wandb_init["id"] != first
    wandb_finish()


def test_run_never_attaches_to_a_wandb_run_left_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    stale = wandb.init(mode="offline", dir=str(tmp_path), project="stale")
    try:
        out = tmp_path / "run"
        assert main(["train", *TINY, "logger.wandb.mode=offline", f"paths.output_dir={out}"]) == 0
        assert list((out / "wandb").glob("offline-run-*")), "the run's W&B files went to the stale run"
    finally:
        stale.finish()


def wandb_finish() -> None:
    import wandb

    wandb.finish()


# ---------------------------------------------------------------------------------- W&B run contents (offline)
OFFLINE = [
    *TINY,
    "experiment=ablations/no_agccn",
    "model=stm3",
    "model.hidden_dim=2",
    "model.node_emb_dim=4",
    "model.d_state=4",
    "callbacks.routing.enabled=false",
    "callbacks.disentanglement.enabled=false",
    "logger.wandb.mode=offline",
    "logger.wandb.log_model=true",
    "callbacks.plots=true",
    "seed=3",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished tiny linear run with an offline W&B run (checkpoints as artifacts); its folder and stdout."""
    out = tmp_path_factory.mktemp("offline") / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("STM3_RUN_DIR", raising=False)
        assert main(["train", *OFFLINE, f"paths.output_dir={out}"]) == 0
    return out, printed.getvalue()


def test_run_identity_is_derived_from_data_model_experiment_and_variant() -> None:
    cfg = compose(["data=pems08", "experiment=reproduce/pems08", "model.contrastive=repaired", "seed=2"])
    identity = run_identity(cfg)
    assert identity.group == "pems08-stm3-reproduce-pems08-contrastive=repaired"
    assert identity.name == "pems08-stm3-reproduce-pems08-contrastive=repaired-seed2"
    assert identity.job_type == "train"
    assert identity.tags == ["pems08", "stm3", "reproduce/pems08", "contrastive=repaired", "seed2"]
    faithful = run_identity(compose(["data=pems08", "tags=[mine]", "logger.wandb.tags=[x]"]))
    assert faithful.group == "pems08-stm3" and faithful.tags == ["pems08", "stm3", "seed12", "mine", "x"]
    own = compose(["logger.wandb.group=g", "logger.wandb.name=n", "logger.wandb.job_type=sweep"])
    mine = run_identity(own)
    assert (mine.name, mine.group, mine.job_type) == ("n", "g", "sweep")
    assert model_variant(compose(["model=linear"]).model) == []
    assert model_variant(compose(["model.scales=[1]", "model.agccn=false"]).model) == [
        "agccn=false",
        "scales=1",
    ]


def test_offline_run_carries_identity_best_val_loss_results_and_checkpoints(
    offline_run: tuple[Path, str], wandb_records: Callable[[Path], list]
) -> None:
    out, _ = offline_run
    records = wandb_records(out)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert run.run_group == "synthetic-stm3-ablations-no_agccn-agccn=false"
    assert run.display_name == f"{run.run_group}-seed3"
    assert run.job_type == "train" and "ablations/no_agccn" in run.tags and "seed3" in run.tags
    (folder,) = out.glob("wandb/offline-run-*")
    summaries = [
        json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
        if (item.key or "/".join(item.nested_key)) == "val/loss"
    ]
    val = [
        float(r["val/loss"]) for r in csv.DictReader((out / "csv" / "metrics.csv").open()) if r["val/loss"]
    ]
    # The summary keeps the running best (define_metric summary=min, recorded in the offline run), not the last.
    assert any(r.metric.name == "val/loss" and r.metric.summary.min for r in records)
    bests = [entry["min"] for entry in summaries]
    assert len(val) == 3 and bests and bests == sorted(bests, reverse=True)
    assert all(any(b == pytest.approx(v) for v in val) for b in bests)
    for name in ("test_metrics.json", "horizon_mae.png"):
        assert (folder / "files" / name).read_bytes() == (out / name).read_bytes()
    assert any(r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model" for r in records)


def test_train_loss_is_logged_per_step_and_per_epoch(offline_run: tuple[Path, str]) -> None:
    out, _ = offline_run
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    assert any(r["train/loss"] for r in rows) and any(r["train/loss_epoch"] for r in rows)
    assert all(not r["train/loss_epoch"] or not r["train/loss"] for r in rows)  # separate rows: step vs epoch


def test_end_of_run_names_the_folder_checkpoints_and_wandb_sync_command(
    offline_run: tuple[Path, str],
) -> None:
    out, printed = offline_run
    (folder,) = out.glob("wandb/offline-run-*")
    assert f"run folder:      {out.resolve()}" in printed
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    assert f"checkpoints:     {(out / 'checkpoints').resolve()} (best {best.name}, last last.ckpt)" in printed
    assert f"upload it with:  wandb sync {folder.resolve()}" in printed


def test_without_the_wandb_package_the_run_logs_csv_only(tmp_path: Path) -> None:
    """As on the GPU boxes: ``import wandb`` fails (here: blocked in a fresh process), the run goes on with CSV."""
    out = tmp_path / "run"
    code = (
        "import sys; sys.modules['wandb'] = None\n"
        "from stm3_lightning.cli import main\n"
        f"sys.exit(main(['train', *{TINY!r}, 'logger.wandb.mode=offline', 'paths.output_dir={out}']))"
    )
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if "W&B" in line] == [
        "INFO stm3_lightning.run.loggers: W&B: the wandb package is not installed; logging to CSV only "
        "(pip install wandb to add W&B)."
    ]
    assert (out / "csv" / "metrics.csv").is_file() and not (out / "wandb").exists()


def test_preempted_run_is_marked_for_the_sweep_to_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_records: Callable[[Path], list]
) -> None:
    from stm3_lightning.run.loggers import build_wandb_logger, mark_preempting

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = build_wandb_logger(compose(["model=linear", "logger.wandb.mode=offline"]), tmp_path)
    mark_preempting([logger])
    wandb_finish()
    assert "preempting" in [r.WhichOneof("record_type") for r in wandb_records(tmp_path)]
