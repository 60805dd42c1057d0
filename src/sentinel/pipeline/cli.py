"""Run a `@hydra.main` function so that every start-up error is one readable message, never a traceback.

Hydra prints a compact message for most composition errors, but a malformed YAML file surfaces as a
full traceback that names no file ("<unicode string>"), and a typo inside a list override
(`datasets=[coco,cocoo]`) lists no valid options. We ask Hydra to raise instead of report
(HYDRA_FULL_ERROR=1 for the duration of the call), then report ourselves: Hydra's compact text when it
has one, the file and line for YAML, the available options for a missing group option. A user who sets
HYDRA_FULL_ERROR=1 still gets the full traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from sentinel.runtime.redaction import ROBOFLOW_KEY_ENV, has_password_in_url, url_secret_fix

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
SECRET_NAME = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)
_MISSING_OPTION = re.compile(r"Could not (?:load|find) '([\w/.-]+)/([\w.-]+)'")


def user_wants_full_error() -> bool:
    """True when the user (not us) asked Hydra for full tracebacks."""
    return os.environ.get("SENTINEL_USER_FULL_ERROR", os.environ.get(FULL_ERROR_ENV, "")) == "1"


def run_cli(main: Callable[[], None], conf_dir: Path, argv: list[str] | None = None) -> None:
    """Call `main()`; on a start-up error print one clear message and exit 1."""
    argv = sys.argv[1:] if argv is None else argv
    secret = secret_override(argv)
    if secret:
        print(
            f"error: '{secret}' on the command line would be written in plain text into the run folder "
            f"(.hydra/, config_resolved.yaml). Fix: remove it and export {ROBOFLOW_KEY_ENV}=<your key> instead",
            file=sys.stderr,
        )
        sys.exit(1)
    in_url = password_override(argv)
    if in_url:
        print(
            f"error: '{in_url}' on the command line holds a password, which would be written in plain text into "
            f"the run folder (.hydra/, config_resolved.yaml). Fix: {url_secret_fix(in_url)}",
            file=sys.stderr,
        )
        sys.exit(1)
    os.environ["SENTINEL_USER_FULL_ERROR"] = "1" if user_wants_full_error() else "0"
    os.environ[FULL_ERROR_ENV] = "1"
    try:
        main()
    except JobFailed as failed:  # the sweep ran every job: say which failed
        print(failed_jobs_summary(Path(failed.sweep_dir)), file=sys.stderr)
        sys.exit(failed.exit_code)
    except Exception as error:
        if user_wants_full_error():
            raise
        print(describe_startup_error(error, config_dirs(conf_dir, argv)), file=sys.stderr)
        print("Set HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
        sys.exit(1)


class JobFailed(Exception):
    """A sweep's job failed (its line is printed); the sweep goes on, and ends with the list of failed jobs."""

    def __init__(self, sweep_dir: str, exit_code: int) -> None:
        super().__init__(sweep_dir, exit_code)  # both in args: Ray's launcher pickles the exception back
        self.sweep_dir, self.exit_code = sweep_dir, exit_code


def failed_jobs_summary(sweep_dir: Path) -> str:
    """`error: sweep: N of M jobs failed (folder)`, then one line per failed job: number, overrides, error."""
    import json

    import yaml

    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    failed = []
    for job in jobs:
        try:
            status = json.loads((job / "run_status.json").read_text())
        except (OSError, ValueError):
            continue
        if status.get("status") != "FAILED":
            continue
        try:
            overrides = " ".join(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
        except (OSError, yaml.YAMLError):
            overrides = "?"
        failed.append(f"  job {job.name} ({overrides}): {status.get('error', '')}")
    return "\n".join([f"error: sweep: {len(failed)} of {len(jobs)} jobs failed ({sweep_dir})", *failed])


def secret_override(argv: list[str]) -> str:
    """The key of the first override that sets a secret (`+datasets.guns.api_key=...`), else ''."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~") if "=" in arg else ""
        if key and SECRET_NAME.search(key.rsplit(".", 1)[-1]):
            return key
    return ""


def password_override(argv: list[str]) -> str:
    """The key of the first override whose value is a URL with a password (`tracking.uri=http://u:pw@h`), else ''."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if value and has_password_in_url(value):
            return key.lstrip("+~")
    return ""


def describe_startup_error(error: BaseException, dirs: list[Path]) -> str:
    """One message for an error raised while Hydra parsed arguments or composed the config."""
    import yaml
    from hydra.errors import CompactHydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    chain = _exception_chain(error)
    yaml_error = next((e for e in chain if isinstance(e, yaml.YAMLError)), None)
    if yaml_error is not None:
        return describe_yaml_error(dirs)
    message = str(error)
    if isinstance(error, MissingConfigException) or "Could not load" in message:
        return message.split("\nConfig search path")[0].rstrip() + _available_options(message, dirs)
    if isinstance(error, CompactHydraException):
        cause = error.__cause__
        return message + (f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else "")
    # Anything else Hydra raised while reading the command line (e.g. "Only one of --run, --multirun, --cfg
    # ... can be specified"): its message is the useful part; the traceback is Hydra's internals.
    return f"{type(error).__name__}: {message}"


def describe_yaml_error(dirs: list[Path]) -> str:
    """Find the config file(s) that do not parse and name file, line and column."""
    import yaml

    problems = []
    for folder in dirs:
        for path in sorted(folder.rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as bad:
                mark = getattr(bad, "problem_mark", None)
                where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
                problems.append(f"{where}: malformed YAML: {getattr(bad, 'problem', None) or bad}")
    if not problems:
        return "malformed YAML in a config file or override; check the quoting of command-line values"
    return "\n".join(problems) + "\nFix the YAML syntax at that line (indentation, brackets, quotes)."


def config_dirs(conf_dir: Path, argv: list[str]) -> list[Path]:
    """The config folders Hydra reads: ours plus --config-dir and file:// entries of hydra.searchpath."""
    dirs = [conf_dir]
    for index, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and index + 1 < len(argv):
            dirs.append(Path(argv[index + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg.startswith("hydra.searchpath="):
            dirs.extend(Path(p) for p in re.findall(r"file://([^,\]\s]+)", arg))
    return [d for d in dirs if d.is_dir()]


def _available_options(message: str, dirs: list[Path]) -> str:
    match = _MISSING_OPTION.search(message)
    if match is None or "Available options" in message:
        return ""
    group = match.group(1)
    options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
    return f"\nAvailable options in '{group}': {', '.join(options)}" if options else ""


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
