"""``stm3`` command line: ``train``, ``eval``, ``summary``, ``datasets``.

Arguments after the sub-command are config choices and overrides, e.g.
``stm3 train data=pems08 model=stm3 experiment=reproduce/pems08 trainer.max_epochs=5 seed=3``.
Every expected failure (bad config, missing/corrupt data, non-finite training) ends with one sentence on stderr and
exit code 2, without a traceback and without touching existing files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from omegaconf import OmegaConf

from stm3_lightning.config.compose import ConfigError, compose


def _expected_errors() -> tuple[type[BaseException], ...]:
    from stm3_lightning.callbacks.nan_guard import NonFiniteError
    from stm3_lightning.data.errors import DataError

    return (ConfigError, DataError, NonFiniteError)


def cmd_train(args: list[str]) -> int:
    from stm3_lightning.train import train

    results = train(compose(args))
    overall = results.get("overall", {})
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in overall.items()))
    return 0


def cmd_eval(args: list[str]) -> int:
    from stm3_lightning.train import evaluate

    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), "")
    if not ckpt:
        raise ConfigError("stm3 eval needs ckpt=<path to a .ckpt file>, e.g. make eval CKPT=outputs/.../last.ckpt.")
    rest = [a for a in args if not a.startswith("ckpt=")]
    from stm3_lightning.evaluation import config_for_checkpoint

    cfg = config_for_checkpoint(ckpt, rest)
    results = evaluate(cfg, ckpt)
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in results.get("overall", {}).items()))
    return 0


def cmd_summary(args: list[str]) -> int:
    from stm3_lightning.summary import summarize

    print(summarize(compose(args)))
    return 0


def cmd_datasets(args: list[str]) -> int:
    from stm3_lightning.data.registry import datasets_table

    data_dir = os.environ.get("STM3_DATA_DIR", "./data")
    print(datasets_table(data_dir))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "summary": cmd_summary, "datasets": cmd_datasets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stm3", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("overrides", nargs="*", help="group=name choices and key=value overrides")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[ns.command](ns.overrides)
    except _expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
