"""Sentinel's one entrypoint: `python train.py mode=<prep|tune|finetune|export|evaluate|all> [overrides]`.

Thin on purpose: Hydra composes and validates the config, `sentinel.pipeline.job` runs it (and `sentinel.pipeline.modes`
the mode). Nothing heavy is imported at module level, so `--cfg job` and `--help` stay fast
(benchmarks/startup.py).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from sentinel.config.schema import register_configs
from sentinel.pipeline.cli import run_cli
from sentinel.pipeline.job import run_job

CONF_DIR = Path(__file__).resolve().parent / "conf"
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    run_cli(main, CONF_DIR)
