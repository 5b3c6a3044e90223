"""The ablation grid: each ``experiments/ablations/<name>.yaml`` applied alone on top of the paper config, x seeds.

An ablation file is a small override (a model switch, e.g. ``model: {agccn: false}``, or a model group choice such
as ``defaults: {model: stm2}``). The paper config of a dataset is ``experiments/reproduce/<data>.yaml`` (plain
``data=<data> model=stm3`` when there is none, e.g. for ``synthetic``). A *cell* ``(ablation, seed)`` is one
``stm3 train`` run in ``<root_dir>/ablations/<data>/<ablation>/seed<k>``; the unmodified paper config is the cell
named :data:`BASELINE`. ``stm3 ablations`` runs the cells one after the other, each in its own process (the same
command a W&B sweep agent runs for one cell), so DDP, W&B and the run folder start clean for every cell.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from stm3_lightning.config.compose import ConfigError, closest_names, project_root
from stm3_lightning.models.registry import model_schema
from stm3_lightning.multirun.jobs import Runner, Status, run_sequential

BASELINE = "full"
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
# Keys of ``stm3 ablations`` itself; every other ``key=value`` argument is passed on to each cell's ``stm3 train``.
RUNNER_KEYS: tuple[str, ...] = ("data", "ablation", "seeds", "seed", "dry_run")


@dataclass(frozen=True)
class Ablation:
    """One ablation: its group choices (``{"model": "stm2"}``) and dotlist overrides (``["model.agccn=false"]``)."""

    name: str
    description: str
    choices: dict[str, str]
    overrides: list[str]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: ``args`` are the ``stm3 train`` arguments of a new run in ``run_dir``."""

    ablation: str
    seed: int
    run_dir: Path
    args: list[str]

    @property
    def label(self) -> str:
        return f"{self.ablation} seed {self.seed}"


def ablations_dir() -> Path:
    return project_root() / "experiments" / "ablations"


def available_ablations() -> list[str]:
    """Ablation names (file stems of ``experiments/ablations/*.yaml``), sorted."""
    return sorted(p.stem for p in ablations_dir().glob("*.yaml"))


def grid_names() -> list[str]:
    """The grid's cells in order: the baseline first, then every ablation."""
    return [BASELINE, *available_ablations()]


def render_value(value: object) -> str:
    """A config value as the right-hand side of a ``key=value`` override that parses back to the same value."""
    if isinstance(value, str):
        parsed = OmegaConf.from_dotlist([f"v={value}"]).v
        return value if parsed == value and isinstance(parsed, str) else json.dumps(value)
    return json.dumps(value)


def flatten(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Leaf ``key.path=value`` overrides of a mapping (lists stay whole: ``model.scales=[1]``)."""
    out: list[str] = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            out += flatten(value, name + ".")
        else:
            plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            out.append(f"{name}={render_value(plain)}")
    return out


def _description(path: Path) -> str:
    first = path.read_text().lstrip().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else path.stem


def unknown_ablations(names: list[str]) -> ConfigError:
    """The error for ablation names that do not exist, with the closest existing names."""
    close = [c for name in names for c in closest_names(name, grid_names())]
    hint = f" Did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
    return ConfigError(
        f"Unknown ablation(s) {', '.join(names)}; choose from {', '.join(grid_names())}.{hint}"
    )


def load_ablation(name: str) -> Ablation:
    """Read ``experiments/ablations/<name>.yaml`` (``full`` is the empty override)."""
    if name == BASELINE:
        return Ablation(BASELINE, "the paper config, unmodified", {}, [])
    path = ablations_dir() / f"{name}.yaml"
    if not path.is_file():
        raise unknown_ablations([name])
    body = OmegaConf.load(path)
    choices = {str(k): str(v) for k, v in (body.pop("defaults", None) or {}).items()}
    return Ablation(name, _description(path), choices, flatten(body))


def base_experiment(data: str) -> str | None:
    """The paper config of ``data``: ``reproduce/<data>`` when ``experiments/reproduce/<data>.yaml`` exists."""
    name = f"reproduce/{data}"
    return name if (project_root() / "experiments" / f"{name}.yaml").is_file() else None


def _model_keys(model: str) -> set[str]:
    try:
        return {f.name for f in fields(model_schema(model))}
    except ValueError as exc:
        raise ConfigError(f"{exc} (model group choice of an ablation file)") from exc


def base_args(data: str, model: str | None) -> list[str]:
    """``stm3 train`` arguments selecting the paper config of ``data``, for the model group ``model``.

    Same model (or none chosen): ``experiment=reproduce/<data>``. Another model (``stm2``): the paper config's
    keys as overrides, without the model keys that the other model's schema lacks (e.g. ``contrast_loss_weight``).
    """
    base = base_experiment(data)
    if base is None:
        return [f"data={data}"]
    cfg = OmegaConf.load(project_root() / "experiments" / f"{base}.yaml")
    defaults = {str(k): str(v) for k, v in (cfg.pop("defaults", None) or {}).items()}
    if model is None or model == defaults.get("model"):
        return [f"experiment={base}", f"data={data}"]
    keep = _model_keys(model)
    if "model" in cfg:
        cfg.model = {k: v for k, v in cfg.model.items() if k in keep}
    choices = [f"{g}={v}" for g, v in defaults.items() if g not in ("model", "data")]
    return [*choices, f"data={data}", *flatten(cfg)]


def cell_dir(root_dir: str | Path, data: str, ablation: str, seed: int) -> Path:
    return Path(root_dir) / "ablations" / data / ablation / f"seed{seed}"


def make_cell(data: str, ablation: str, seed: int, root_dir: str | Path, extra: Sequence[str] = ()) -> Cell:
    """The ``stm3 train`` arguments of one cell; ``extra`` overrides (e.g. tiny limits) come last."""
    spec = load_ablation(ablation)
    run_dir = cell_dir(root_dir, data, ablation, seed)
    args = [
        *base_args(data, spec.choices.get("model")),
        *(f"{g}={v}" for g, v in spec.choices.items()),
        *spec.overrides,
        f"seed={seed}",
        f"paths.output_dir={run_dir}",
        f"logger.wandb.group={ablation}",
        f"logger.wandb.name={data}-{ablation}-seed{seed}",
        *extra,
    ]
    return Cell(ablation, seed, run_dir, args)


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` or ``"[1, 2, 3]"`` -> ``[1, 2, 3]``."""
    try:
        seeds = [int(s) for s in text.strip("[]").replace(" ", "").split(",") if s]
    except ValueError as exc:
        raise ConfigError(f"seeds={text} is not a list of integers; write e.g. seeds=1,2,3.") from exc
    if not seeds:
        raise ConfigError("seeds= is empty; write e.g. seeds=1,2,3.")
    return seeds


@dataclass(frozen=True)
class GridRequest:
    """What ``stm3 ablations`` was asked for: the data, the cells' names and seeds, the pass-through overrides."""

    data: str
    names: list[str]
    seeds: list[int]
    extra: list[str]
    dry_run: bool = False

    @property
    def root_dir(self) -> str:
        given = [a.split("=", 1)[1] for a in self.extra if a.startswith("paths.root_dir=")]
        return given[-1] if given else "outputs"


def split_runner_args(
    args: Sequence[str], runner_keys: Sequence[str], example: str, refuse: Callable[[str], str]
) -> tuple[dict[str, str], list[str]]:
    """``key=value`` arguments of a grid command split into its own keys (``runner_keys``) and the pass-through
    ``stm3 train`` overrides; ``experiment``, ``exp`` and ``paths.output_dir`` are the runner's to set and are
    refused with the sentence ``refuse(key)``, a bare word with one naming ``example``."""
    own: dict[str, str] = {}
    extra: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"Argument '{arg}' is not of the form key=value; write e.g. {example}.")
        if key in runner_keys:
            own[key] = value
        elif key in ("experiment", "exp", "paths.output_dir"):
            raise ConfigError(refuse(key))
        else:
            extra.append(arg)
    return own, extra


def parse_request(args: Sequence[str]) -> GridRequest:
    """Split ``stm3 ablations`` arguments into the runner's keys (:data:`RUNNER_KEYS`) and pass-through overrides.

    ``ablation=a,b`` picks cells (default: the whole grid), ``seed=k`` one seed, ``seeds=1,2,3`` several.
    """
    own, extra = split_runner_args(
        args,
        RUNNER_KEYS,
        example="ablation=no_agccn",
        refuse=lambda key: (
            f"stm3 ablations sets {key} itself (paper config and one folder per cell); drop {key}= "
            "or run a single configuration with `stm3 train`."
        ),
    )
    names = [n for n in own.get("ablation", "").split(",") if n] or grid_names()
    unknown = [n for n in names if n not in grid_names()]
    if unknown:
        raise unknown_ablations(unknown)
    seeds = parse_seeds(own["seed"]) if "seed" in own else list(DEFAULT_SEEDS)
    if "seeds" in own:
        seeds = parse_seeds(own["seeds"])
    dry_run = own.get("dry_run", "false").lower() in ("1", "true", "yes")
    return GridRequest(own.get("data", "synthetic"), names, seeds, extra, dry_run)


def plan_grid(request: GridRequest) -> list[Cell]:
    """Every requested cell, ablation-major (all seeds of one ablation, then the next)."""
    return [
        make_cell(request.data, name, seed, request.root_dir, request.extra)
        for name in request.names
        for seed in request.seeds
    ]


@dataclass
class GridOutcome:
    ran: list[Cell]
    skipped: list[Cell]
    failed: list[Cell]


def run_grid(
    cells: Sequence[Cell],
    runner: Runner = subprocess.call,
    dry_run: bool = False,
    resume_overrides: bool = False,
    reopened: frozenset[Path] = frozenset(),
) -> GridOutcome:
    """Run the cells sequentially (a failed cell is reported and the grid goes on); finished cells are skipped;
    with ``resume_overrides`` an interrupted cell resumes with its arguments (e.g. a larger max_epochs);
    ``reopened`` run folders count as interrupted (see :func:`stm3_lightning.multirun.jobs.train_args`)."""
    results = run_sequential(cells, runner, dry_run, resume_overrides=resume_overrides, reopened=reopened)

    def having(status: Status) -> list[Cell]:
        return [r.job for r in results if r.status is status]  # type: ignore[misc]

    return GridOutcome(having(Status.DONE), having(Status.SKIPPED), having(Status.FAILED))
