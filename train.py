"""Sentinel's one entrypoint: `python train.py mode=<prep|tune|finetune|export|evaluate|all> [overrides]`.

Thin on purpose: Hydra composes and validates the config, and `sentinel.pipeline` runs the mode. Nothing
heavy is imported at module level, so `--cfg job` and `--help` stay fast (benchmarks/startup.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sentinel.cli import run_cli, user_wants_full_error
from sentinel.errors import SentinelError
from sentinel.redaction import install_redaction, redact
from sentinel.schema import register_configs

CONF_DIR = Path(__file__).resolve().parent / "conf"
log = logging.getLogger("sentinel")
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    install_redaction()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    from sentinel.pipeline import run_mode

    try:
        run_mode(cfg, run_dir)
    except SentinelError as error:
        fail(redact(str(error)), getattr(error, "exit_code", 1))
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); the stage that was running is recorded as unfinished and can resume", 130)
    except Exception as error:  # a bug or an environment problem we did not foresee: one line, details in the log
        log_to_file_only("unexpected error", exc_info=sys.exc_info())
        if user_wants_full_error():
            raise
        fail(
            f"unexpected {type(error).__name__}: {redact(str(error)).splitlines()[0] if str(error) else ''} "
            f"(full traceback in {run_dir / 'train.log'})",
            1,
        )


def fail(message: str, exit_code: int) -> None:
    """One line on stderr, the same line in the run's log file, and a non-zero exit."""
    log_to_file_only(f"error: {message}")
    print(f"error: {message}", file=sys.stderr)
    if user_wants_full_error() and sys.exc_info()[0] is not None:
        raise
    sys.exit(exit_code)


def log_to_file_only(message: str, exc_info: Any = None) -> None:
    """Record an error (with its traceback, if given) in the run's log file only; the terminal gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    run_cli(main, CONF_DIR)
