"""OmegaConf resolvers that Sentinel's config files use.

Registered when the `sentinel` package is imported, because a Hydra job that runs in a Ray worker
(hydra-ray-launcher) resolves its config there: the worker imports sentinel (through the task function)
but never runs train.py's start-up code.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """`${sentinel.launch_dir:}`: the folder train.py was launched from, as an absolute path.

    Cached in the config (use_cache), so Hydra's copy of the sweep's resolved values reaches each job of a
    Ray-launcher sweep: the job writes under the launch folder, not under its worker's working folder.
    (`${hydra:runtime.cwd}` cannot serve: Hydra resolves `hydra.sweep.dir` before it sets HydraConfig.)
    """
    if not OmegaConf.has_resolver("sentinel.launch_dir"):
        OmegaConf.register_new_resolver("sentinel.launch_dir", os.getcwd, use_cache=True)
