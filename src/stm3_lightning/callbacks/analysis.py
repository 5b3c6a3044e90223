"""Common machinery of the routing and disentanglement callbacks: analyse a fixed validation batch every few epochs.

A subclass names its metric family (``family``: "routing", "disent"), says whether it needs every expert run on
the batch (``all_experts``) and implements :meth:`FixedBatchAnalysisCallback.measure`. The base class

- takes the batch once: the inputs of the first ``cfg.batch_size`` validation windows, the same at every evaluation;
- runs at the end of validation on epochs ``0, n, 2n, ...`` (``n = cfg.every_n_epochs``), never in the sanity
  check, on the global-zero process only;
- puts the model in eval mode under ``no_grad`` and runs every diagnostic pass with the CPU generator and the
  model device's generator seeded with :data:`ANALYSIS_SEED` and restored afterwards: the router noise is the
  same at every pass and every evaluation, and training draws exactly the random numbers it would without
  the callback;
- logs the scalars through ``pl_module.log`` (so every configured logger gets them) and the figures through
  :func:`stm3_lightning.callbacks.figure_sink.log_figures`;
- switches itself off, with one info message, for models without routing diagnostics (a safety net:
  :func:`stm3_lightning.run.builders.build_analysis_callbacks` only adds the callbacks for models that route, see
  :func:`has_routing`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from stm3_lightning.callbacks.figure_sink import NamedFigure, log_figures
from stm3_lightning.config.schema import AnalysisCallbackConfig

log = logging.getLogger(__name__)

ANALYSIS_SEED = 0
Diagnostics = list[dict[str, Tensor]]


def _first_loader(loaders: object) -> object:
    """The first of the validation loader(s) a trainer holds (a loader, a sequence or a mapping of loaders)."""
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise ValueError(
            "The trainer has no validation dataloader; analysis callbacks need a validation set."
        )
    return loaders


def _inputs(item: object) -> Tensor:
    """The model input of a dataset item or batch ``(x, y)``."""
    x = item[0] if isinstance(item, tuple | list) else item
    if not isinstance(x, Tensor):
        raise TypeError(f"Validation items must be (x, y) with x a tensor, got a {type(x).__name__} input.")
    return x


def first_windows(loaders: object, size: int) -> Tensor:
    """Inputs of the first ``size`` windows of the (first) validation loader, in dataset order.

    Map-style datasets are indexed directly (no worker is started); iterable ones are read batch by batch.
    Returns x: [b, L, N, C] on the CPU with b = min(size, number of windows).
    """
    loader = _first_loader(loaders)
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and not isinstance(dataset, IterableDataset):
        count = min(size, len(dataset))
        return torch.stack([_inputs(dataset[i]) for i in range(count)]).cpu()
    chunks, count = [], 0
    for batch in loader:
        chunks.append(_inputs(batch)[: size - count].cpu())
        count += chunks[-1].shape[0]
        if count >= size:
            break
    return torch.cat(chunks)


def _seed_generators(device: torch.device, seed: int) -> None:
    """Seed the CPU generator and the default generator of ``device``, and no other."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type != "cpu":
        torch.get_device_module(device.type).manual_seed(seed)


@contextmanager
def seeded_rng(device: torch.device, seed: int = ANALYSIS_SEED) -> Iterator[None]:
    """Run the block with the CPU and ``device`` generators seeded with ``seed``; restore their states afterwards."""
    devices = [device.index or 0] if device.type != "cpu" else []
    device_type = device.type if device.type != "cpu" else "cuda"
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        _seed_generators(device, seed)
        yield


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with every submodule in eval mode and gradients off; restore each module's mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def layer_keys(metrics: Mapping[str, float], layer: int) -> dict[str, float]:
    """``{"routing/flip_rate": v}`` -> ``{"routing/layer<layer>/flip_rate": v}``."""
    out = {}
    for key, value in metrics.items():
        family, name = key.split("/", 1)
        out[f"{family}/layer{layer}/{name}"] = value
    return out


def has_routing(model: nn.Module) -> bool:
    """Whether ``model`` is one the analysis callbacks measure: it routes (``has_router``) and offers
    ``routing_diagnostics`` (STM3, not STM2 or the baselines)."""
    return bool(getattr(model, "has_router", False)) and callable(getattr(model, "routing_diagnostics", None))


class FixedBatchAnalysisCallback(Callback, ABC):
    """Analyse a fixed validation batch every ``cfg.every_n_epochs`` epochs (see the module docstring)."""

    family: str = "analysis"
    all_experts: bool = False

    def __init__(self, cfg: AnalysisCallbackConfig, run_dir: str | Path) -> None:
        if cfg.every_n_epochs < 1 or cfg.batch_size < 1:
            raise ValueError(
                f"callbacks.{self.family}: every_n_epochs and batch_size must be >= 1, got "
                f"{cfg.every_n_epochs} and {cfg.batch_size}."
            )
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.active = True
        self._batch: Tensor | None = None
        self._last_evaluation: tuple[int, int] = (-1, -1)  # (epoch, global step) of the last evaluation

    @abstractmethod
    def measure(
        self, model: nn.Module, x: Tensor, diags: Diagnostics, epoch: int, draw: bool
    ) -> tuple[dict[str, float], list[NamedFigure]]:
        """Scalars ``{"<family>/layer<i>/<metric>": value}`` and, when ``draw``, figures for one evaluation.

        x: [B, L, N, C] the fixed batch on the model's device; diags: ``model.routing_diagnostics(x)`` per layer.
        """

    # --------------------------------------------------------------------------------------------- helpers
    def diagnostics(self, model: nn.Module, x: Tensor) -> Diagnostics:
        """``model.routing_diagnostics(x: [B, L, N, C])`` under the seeded generators (same noise every call)."""
        with seeded_rng(x.device):
            return model.routing_diagnostics(x, all_experts=self.all_experts)

    def _due(self, trainer: L.Trainer) -> bool:
        """At every validation (also several per epoch with ``trainer.val_check_interval``) of the epochs
        ``0, n, 2n, ...``, never in the sanity check."""
        epoch = trainer.current_epoch
        return (
            self.active
            and not trainer.sanity_checking
            and epoch % self.cfg.every_n_epochs == 0
            and (epoch, trainer.global_step) != self._last_evaluation
        )

    def _deactivate(self, model: nn.Module, why: str) -> None:
        self.active = False
        log.info(
            "%s: %s %s; the callback does nothing in this run.",
            type(self).__name__,
            type(model).__name__,
            why,
        )

    def fixed_batch(self, trainer: L.Trainer) -> Tensor:
        """The fixed validation inputs ``x: [B, L, N, C]`` (CPU), taken at the first evaluation."""
        if self._batch is None:
            self._batch = first_windows(trainer.val_dataloaders, self.cfg.batch_size)
        return self._batch

    # ----------------------------------------------------------------------------------------------- hook
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        self._last_evaluation = (trainer.current_epoch, trainer.global_step)
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, "model", pl_module)
        if not callable(getattr(model, "routing_diagnostics", None)):
            self._deactivate(model, "has no routing_diagnostics()")
            return
        scalars, figures = self._evaluate(trainer, model, pl_module.device)
        for key, value in scalars.items():
            pl_module.log(key, value, rank_zero_only=True)
        log_figures(trainer, self.run_dir, figures, trainer.current_epoch)

    def _evaluate(
        self, trainer: L.Trainer, model: nn.Module, device: torch.device
    ) -> tuple[dict[str, float], list[NamedFigure]]:
        plugin = trainer.precision_plugin
        x = plugin.convert_input(self.fixed_batch(trainer).to(device))
        with eval_mode(model), plugin.forward_context():
            diags = self.diagnostics(model, x)
            if not diags:
                self._deactivate(model, "has no routed layers")
                return {}, []
            return self.measure(model, x, diags, trainer.current_epoch, draw=self.cfg.log_images)
