"""Structured (dataclass) schemas that every composed configuration is validated against.

The YAML groups under ``configs/`` only set values; the fields, their types and their defaults live here, so an
unknown key or a wrong type fails before any work starts (see :mod:`stm3_lightning.config.compose`).
Each model's own schema (a :class:`~stm3_lightning.types.ModelConfig`) is listed in :mod:`stm3_lightning.models.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from stm3_lightning.types import ModelConfig

__all__ = ["ModelConfig", "RunConfig"]  # ModelConfig: the base of every model schema, defined in types


class Choice(str, Enum):
    """A string choice of the schema: OmegaConf accepts exactly the member names, and the member compares,
    formats and serialises as its plain string value."""

    def __str__(self) -> str:
        return self.value


class SplitMode(Choice):
    ratio = "ratio"
    ratio_lookback = "ratio_lookback"
    borders = "borders"
    window = "window"


class ScalerKind(Choice):
    standard = "standard"
    none = "none"


class NanPolicy(Choice):
    fail = "fail"
    mask = "mask"


class MetricsProtocol(Choice):
    official = "official"
    masked = "masked"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class ProgressBar(Choice):
    auto = "auto"
    rich = "rich"
    tqdm = "tqdm"
    plain = "plain"
    none = "none"


@dataclass
class PathsConfig:
    """Where data is read from and where a run writes its files."""

    data_dir: str = "${oc.env:STM3_DATA_DIR,./data}"
    root_dir: str = "outputs"
    # A run's own folder; empty = ``<root_dir>/<data>/<model>/<timestamp>`` (never reusing an existing folder).
    output_dir: str = ""


@dataclass
class SplitConfig:
    """How the raw series is cut into train/val/test (see ``data/splits.py``).

    mode: ``ratio`` (official STM3/AGCRN: val/test are the last fractions of the raw series, windows inside
    each part), ``ratio_lookback`` (TSLib: same cut, val/test start ``input_len`` steps early), ``borders``
    (explicit row borders, val/test start ``input_len`` steps early, as the Informer ETT protocol) or
    ``window`` (STAEformer/LargeST: all windows of the whole series split by ratio).
    """

    mode: SplitMode = SplitMode.ratio
    ratios: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    borders: list[int] = field(default_factory=list)


@dataclass
class ScalerConfig:
    """Z-score scaler fitted on the training part only."""

    kind: ScalerKind = ScalerKind.standard
    per_node: bool = False  # official column_wise: one mean/std per node


@dataclass
class SyntheticConfig:
    """Deterministic graph-diffused periodic signals (the offline default dataset)."""

    num_nodes: int = 16
    num_steps: int = 1344  # 14 days
    steps_per_day: int = 96  # 15-minute steps
    seed: int = 0
    noise: float = 0.1
    diffusion_steps: int = 2


@dataclass
class DataConfig:
    """A dataset and its benchmark protocol (each ``configs/data/<name>.yaml`` owns its defaults)."""

    name: str = MISSING
    input_len: int = 12
    horizon: int = 12
    split: SplitConfig = field(default_factory=SplitConfig)
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    # Loss computed on inverse-scaled values (official ``real_value``).
    real_value: bool = True
    # Adds time-of-day and day-of-week channels after the value channel (the release computes, never uses them).
    time_features: bool = True
    steps_per_day: int = 288
    # Which feature of a multi-channel file is the target (e.g. Milan: 0 sms, 1 call, 2 internet).
    channel: int = 0
    # Entries equal to this value are missing under ``metrics.protocol=masked``; ``nan`` means NaN entries.
    null_val: float = 0.0
    # What to do with NaN/inf in the raw series: ``fail`` or ``mask`` (replace by null_val, exclude from metrics).
    nan_policy: NanPolicy = NanPolicy.fail
    download: bool = True
    batch_size: int = 64
    eval_batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    drop_last: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    """AdamW + MultiStepLR, as the release (reference §4)."""

    lr: float = 3e-3
    weight_decay: float = 0.0
    eps: float = 1e-8
    milestones: list[int] = field(default_factory=lambda: [25])
    gamma: float = 0.5


@dataclass
class MetricsConfig:
    """Evaluation protocol.

    protocol: ``official`` (unmasked MAE/RMSE, MAPE where truth > 0, as the release) or ``masked``
    (BasicTS: entries equal to ``data.null_val`` excluded from every metric).
    """

    protocol: MetricsProtocol = MetricsProtocol.official
    horizons: list[int] = field(default_factory=lambda: [3, 6, 12])
    mape_eps: float = 1e-3
    save_predictions: bool = False


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer``."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 100
    min_epochs: int = 0
    max_steps: int = -1
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    fast_dev_run: Any = False
    gradient_clip_val: Any = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 2
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    benchmark: Any = None
    enable_progress_bar: bool = True


@dataclass
class WandbConfig:
    """Weights & Biases through Lightning's ``WandbLogger``."""

    # online falls back to offline when no credentials are configured.
    mode: WandbMode = WandbMode.offline
    project: str = "stm3-lightning"
    entity: str = ""
    # Empty name/group/job_type: derived from the run (see ``stm3_lightning.run.loggers.run_identity``):
    # group <data>-<model>[-<experiment>][-<variant>], name <group>-seed<seed>, job_type = task.
    group: str = ""
    name: str = ""
    job_type: str = ""
    # Extra tags; data, model, experiment, variant switches and seed<k> are always added (and ``tags``).
    tags: list[str] = field(default_factory=list)
    # Checkpoints as W&B artifacts (Lightning's WandbLogger log_model): false, true (at the end) or all.
    log_model: Any = False
    # Seconds to wait for the W&B service before continuing offline.
    init_timeout: float = 30.0


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val/loss"
    patience: int = 15
    mode: str = "min"


@dataclass
class CheckpointConfig:
    monitor: str = "val/loss"
    mode: str = "min"
    save_last: bool = True
    save_top_k: int = 1
    # Also checkpoint every N optimizer steps (0 = only at epoch end).
    every_n_train_steps: int = 0


@dataclass
class AnalysisCallbackConfig:
    """Routing / disentanglement instrumentation (callbacks/routing.py, callbacks/disentanglement.py).

    On by default; only models that route (STM3) get the callbacks, others skip them with one info line.
    """

    enabled: bool = True
    every_n_epochs: int = 1
    batch_size: int = 8
    sensitivity_sigma: float = 0.01
    sensitivity_samples: int = 4
    log_images: bool = True


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # auto = rich on a terminal, plain (one line every progress_every_n_steps steps) when stdout is not one
    progress_bar: ProgressBar = ProgressBar.auto
    progress_every_n_steps: int = 50
    plots: bool = True
    nan_guard: bool = True
    routing: AnalysisCallbackConfig = field(default_factory=AnalysisCallbackConfig)
    disentanglement: AnalysisCallbackConfig = field(default_factory=AnalysisCallbackConfig)
    # Also score the test split after every validation and log ``test_curve/*`` (never used for selection;
    # the release's test-selected checkpoint is measured from it, see callbacks/test_curve.py).
    test_every_epoch: bool = False


@dataclass
class RunConfig:
    """The whole configuration of one run."""

    seed: int = 12
    # Seed of the random numbers drawn at evaluation (the release's router noise in eval mode); empty = ``seed``.
    eval_seed: int | None = None
    task: str = "train"
    tags: list[str] = field(default_factory=list)
    # Checkpoint to resume from: a path, ``last`` (this run dir's last.ckpt) or empty.
    ckpt_path: str = ""
    # A previous run directory to continue (reuses its config and its last checkpoint).
    resume: str = ""
    # Names of the composed group files, recorded for reports.
    choices: dict[str, str] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
