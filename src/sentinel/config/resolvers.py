"""OmegaConf resolvers that Sentinel's config files use.

Registered when the `sentinel` package is imported, because a Hydra job that runs in a Ray worker
(hydra-ray-launcher) resolves its config there: the worker imports sentinel (through the task function)
but never runs train.py's start-up code.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def fresh_run_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: a run folder this process creates, so no other run has it.

    Hydra names the default run folder to the second: two commands started in the same second (a script, two
    terminals) would share it, and the second be refused as another run's folder. The folder is claimed by
    creating it (mkdir fails for all but one of two processes). Cached (use_cache), so every read in this
    process gets the same folder. A folder given on the command line (hydra.run.dir=...) is used as given.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def from_launch_dir(path: str) -> str:
    """`${sentinel.from_launch_dir:PATH}`: PATH under the folder train.py was launched from, as an absolute path
    (an absolute PATH as it is).

    Cached in the config (use_cache), so Hydra's copy of the sweep's resolved values reaches each job of a
    Ray-launcher sweep: the job writes under the launch folder, not under its worker's working folder.
    (`${hydra:runtime.cwd}` cannot serve: Hydra resolves `hydra.sweep.dir` before it sets HydraConfig.)
    """
    return str(Path(os.getcwd()) / Path(path).expanduser())


INTERNAL_GROUPS = ("hydra", "sentinel")  # Hydra's own, and the source schemas conf/datasets/ builds on


def help_groups() -> str:
    """`${sentinel.help_groups:}` in `--help` (hydra.help.template): each config group a user picks from, with
    its options, one line each. Hydra's $APP_CONFIG_GROUPS would list the internal `sentinel/source` too."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group in sorted(loader.list_groups("")):
        if group in INTERNAL_GROUPS:
            continue
        options = ", ".join(loader.get_group_options(group))
        lines.append(f"  {group + ':':<14}{options}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """`${sentinel.fresh_run_dir:PATH}` (hydra.run.dir), `${sentinel.from_launch_dir:PATH}` (hydra.sweep.dir) and
    `${sentinel.help_groups:}` (hydra.help.template)."""
    if not OmegaConf.has_resolver("sentinel.help_groups"):
        OmegaConf.register_new_resolver("sentinel.help_groups", help_groups)
    if not OmegaConf.has_resolver("sentinel.fresh_run_dir"):
        OmegaConf.register_new_resolver("sentinel.fresh_run_dir", fresh_run_dir, use_cache=True)
    if not OmegaConf.has_resolver("sentinel.from_launch_dir"):
        OmegaConf.register_new_resolver("sentinel.from_launch_dir", from_launch_dir, use_cache=True)
