"""What train.py does with the config Hydra composed: one run, its failures as one line, and the run's edges
(secrets scrubbed from Hydra's files, SIGTERM as Ctrl-C, a sweep's failed job that lets the others run).

Light on purpose, like train.py: `sentinel.pipeline.modes` and the stages are imported only once a run starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sentinel.errors import ConfigError, SentinelError
from sentinel.pipeline.cli import JobFailed, user_wants_full_error
from sentinel.runtime.redaction import install_redaction, password_in_config, redact, scrub_files, url_secret_fix
from sentinel.runtime.runs import write_run_status
from sentinel.runtime.signals import EXIT_CODE as SIGTERM_EXIT
from sentinel.runtime.signals import handle_sigterm_as_ctrl_c, terminated

log = logging.getLogger("sentinel")


def run_job(cfg: DictConfig) -> None:
    """One run (or one job of a sweep) of the composed config: every failure is one line on the terminal."""
    install_redaction()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    if HydraConfig.get().job.chdir:  # paths in the config are relative to the launch folder, whatever chdir says
        os.chdir(HydraConfig.get().runtime.cwd)
    scrub_files(hydra_written_files(run_dir))  # Hydra wrote them before this function: no secret stays there
    from sentinel.pipeline.modes import run_mode

    previous = handle_sigterm_as_ctrl_c()
    try:
        refuse_password_in_config(cfg)
        run_mode(cfg, run_dir)
    except SentinelError as error:
        code = getattr(error, "exit_code", 1)
        fail_job(redact(str(error)), SIGTERM_EXIT if code == 130 and terminated() else code, run_dir, cfg)
    except KeyboardInterrupt:
        how, code = ("SIGTERM", SIGTERM_EXIT) if terminated() else ("Ctrl-C", 130)
        fail(f"interrupted ({how}); the stage that was running is recorded as unfinished and can resume", code)
    except Exception as error:  # a bug or an environment problem we did not foresee: one line, details in the log
        log_to_file_only("unexpected error", exc_info=sys.exc_info())
        if user_wants_full_error():
            raise
        fail_job(
            f"unexpected {type(error).__name__}: {redact(str(error)).splitlines()[0] if str(error) else ''} "
            f"(full traceback in {run_dir / 'train.log'})",
            1,
            run_dir,
            cfg,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail_job(message: str, exit_code: int, run_dir: Path, cfg: DictConfig) -> None:
    """A run that failed: `fail`, but in a sweep the other jobs go on (Hydra runs a batch's jobs until one
    raises SystemExit), and the sweep ends with the list of failed jobs (sentinel.pipeline.cli.JobFailed)."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        fail(message, exit_code)
    job = HydraConfig.get().job.num
    log_to_file_only(f"error: {message}")
    print(f"error: job {job}: {message}", file=sys.stderr)
    with contextlib.suppress(OSError):
        write_run_status(run_dir, str(getattr(cfg.mode, "value", cfg.mode)), "FAILED", error=message)
    raise JobFailed(str(HydraConfig.get().sweep.dir), exit_code)


def hydra_written_files(run_dir: Path) -> list[Path]:
    """The config files Hydra saved for this run (and for its sweep)."""
    files = sorted(run_dir.glob(".hydra/*.yaml"))
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        files.append(Path(HydraConfig.get().sweep.dir) / "multirun.yaml")
    return files


def refuse_password_in_config(cfg: DictConfig) -> None:
    """A URL with a password in a config file is refused like one on the command line (sentinel.pipeline.cli)."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that does not resolve: validation names it later
        values = OmegaConf.to_container(cfg, resolve=False)
    key = password_in_config(values)
    if key:
        raise ConfigError(key, "holds a password, which every record of the run would keep", url_secret_fix(key))


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
