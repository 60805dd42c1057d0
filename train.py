"""Sentinel's one entrypoint: `python train.py mode=<prep|tune|finetune|export|evaluate|all> [overrides]`.

Thin on purpose: Hydra composes and validates the config, and `sentinel.pipeline` runs the mode. Nothing
heavy is imported at module level, so `--cfg job` and `--help` stay fast (benchmarks/startup.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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
        message = redact(str(error))
        log_to_file_only(f"error: {message}")
        print(f"error: {message}", file=sys.stderr)
        if user_wants_full_error():
            raise
        sys.exit(1)


def log_to_file_only(message: str) -> None:
    """Record an error in the run's log file; the terminal gets it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    run_cli(main, CONF_DIR)
