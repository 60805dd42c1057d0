"""The README is a contract: every `python train.py …` and `make …` command it prints works as written.

Commands are read from README.md itself (code blocks and inline code), so a new or changed command is
tested the day it is written. Each `python train.py` command runs, in README order and in one working
folder (so `latest` finds what the commands before it made):
- for real, with tiny overrides appended (a 64 px scratch model, 1–2 epochs, 2 trials), when this offline,
  CPU-only machine can run it;
- with `--cfg job` when it needs what the machine does not have (Roboflow/COCO downloads, pretrained
  weights, a GPU, a Ray cluster): then the config must compose and validate; a sweep is checked job by job.
`make` targets must exist; `make demo` runs the command it expands to, for real; `make lint` runs.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_train

README = REPO / "README.md"
NETWORK_DATASETS = {"coco", "guns", "knife", "parcel"}
# Overrides that need more than this machine: downloads, pretrained weights, GPUs, a Ray cluster, a team's
# MLflow server.
OUTSIDE = re.compile(
    r"^(experiment=notebook|model=yolov8[ns](,|$)|hardware=(gpu|multi_gpu|cluster)|.*ray_address=|"
    r"\+?hydra\.launcher\.ray\.init\.address=|hydra/launcher=ray_cluster|tracking\.uri=https?://|"
    r"predict\.source=(rtsp|https?)://)"
)


def tiny(data_dir: Path) -> list[str]:
    return [
        f"data_dir={data_dir}",
        "model=yolov8n_scratch",
        "model.imgsz=64",
        "model.epochs=1",
        "augmentation.close_mosaic=0",  # below model.epochs, or mosaic never acts (refused at start-up)
        "model.patience=1",
        "search_space=demo",
        "tune.num_samples=2",
        "tune.epochs=2",
        "tune.grace_period=1",
        "hardware.num_cpus=2",
        "merge.samples_grid=4",
    ]


def readme_commands() -> list[str]:
    """Every command in README.md that starts with `python train.py` or `make `, in order of appearance."""
    text = README.read_text()
    snippets: list[str] = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):  # every fence, paired
        if language in ("", "bash", "sh"):
            snippets += block.splitlines()
    snippets += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for snippet in snippets:
        for part in snippet.split("&&"):
            command = part.split(" #")[0].strip()
            if command.startswith(("python train.py", "python scripts/", "make ")) and command not in commands:
                commands.append(command)
    return commands


def needs_outside(args: list[str]) -> bool:
    for arg in args:
        if OUTSIDE.match(arg):
            return True
        if arg.startswith("datasets=") and set(arg.split("=", 1)[1].strip("[]").split(",")) & NETWORK_DATASETS:
            return True
    return False


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """A multirun's jobs: `-m` dropped, each `key=a,b` (outside brackets and quotes) expanded."""
    choices = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        key, _, value = arg.partition("=")
        if value and "," in value and not value.startswith(("[", "{", "'", '"')) and not key.startswith("hydra"):
            choices.append([f"{key}={v}" for v in value.split(",")])
        else:
            choices.append([arg])
    return [list(job) for job in itertools.product(*choices)]


def test_the_readme_prints_the_commands_this_test_knows_how_to_run():
    commands = readme_commands()
    assert "make demo" in commands and "make test" in commands
    assert sum(c.startswith("python train.py") for c in commands) >= 10
    assert not [c for c in commands if "<" in c or "..." in c], "placeholders cannot run as written"


def user_dataset_conf(tmp_path: Path) -> Path:
    """The README's own `mine.yaml` (its YAML block for a local YOLO folder), pointed at a small generated
    dataset with train, val and test splits: a conf folder for `hydra.searchpath`."""
    from builders import jpeg_bytes, make_source

    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S) if "yolo@mine" in b]
    splits = {
        split: {f"{split}{i}.jpg": (jpeg_bytes(100 * n + i), f"{i % 2} 0.5 0.5 0.4 0.4\n") for i in range(count)}
        for n, (split, count) in enumerate((("train", 12), ("val", 4), ("test", 4)))
    }
    root = make_source(tmp_path / "my_yolo_dataset", ["gun", "person"], splits)
    conf = tmp_path / "user_conf" / "datasets"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(re.sub(r"path: .*", f"path: {root}", block))
    return conf.parent


@pytest.mark.slow
def test_every_train_command_in_the_readme_works_as_written(tmp_path):
    data_dir = tmp_path / "data"
    ran, checked = [], []
    user_conf = user_dataset_conf(tmp_path)
    for command in [c for c in readme_commands() if c.startswith(("python train.py", "python scripts/"))]:
        if command.startswith("python scripts/"):  # a helper the next commands use (the demo video)
            script, *script_args = shlex.split(command)[1:]
            result = subprocess.run(
                [sys.executable, str(REPO / script), *script_args], cwd=tmp_path, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
            ran.append(command)
            continue
        args = shlex.split(command)[2:]
        if any(arg.startswith("datasets=[mine") for arg in args):  # the README's mine.yaml, as a user adds it
            args.append(f"hydra.searchpath=[file://{user_conf}]")
        if needs_outside(args) or "-m" in args:
            for job in sweep_jobs(args):
                result = run_train(["--cfg", "job", *job], cwd=tmp_path)
                assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
                checked.append(command)
            continue
        if args[:2] == ["--cfg", "job"] or args == ["--help"]:
            result = run_train(args, cwd=tmp_path)
        else:
            result = run_train([*args, *tiny(data_dir)], cwd=tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, command
        ran.append(command)
    assert any("datasets=[mine]" in c for c in ran)
    assert any("mode=finetune finetune.hparams_from=latest" in c for c in ran)
    assert any("evaluate.compare_to=latest" in c for c in ran)
    assert any("mode=predict predict.source=door.avi" in c for c in ran)
    assert checked, "no command needed the --cfg job path: the classification is broken"


def make_dry_run(target: str) -> list[str]:
    result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"make {target}: {result.stderr}"
    return result.stdout.splitlines()


def test_every_make_target_in_the_readme_exists():
    for command in [c for c in readme_commands() if c.startswith("make ")]:
        make_dry_run(command.split()[1])


def test_make_bench_runs_every_benchmark_script():
    lines = make_dry_run("bench")
    scripts = sorted(p.name for p in (REPO / "benchmarks").glob("[!_]*.py"))
    assert sorted(Path(line.split()[-1]).name for line in lines if "benchmarks/" in line) == scripts


@pytest.mark.slow
def test_make_demo_runs_the_demo_pipeline(tmp_path):
    (command,) = [line for line in make_dry_run("demo") if "train.py" in line]
    args = shlex.split(command)
    assert args[1:] == ["train.py", "experiment=demo", "mode=all"]
    result = run_train([*args[2:], f"data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("prep_report.md", "best_hparams.yaml", "sentinel.pt", "export/sentinel.torchscript", "metrics.md"):
        assert (tmp_path / "run" / name).exists(), name
    # The summary names what it scores: the demo ranks trials by a loss, which a bare number would hide.
    assert re.search(r"^  tune: .*\(best val/box_loss \d+\.\d{4}\)", result.stdout, re.M), result.stdout[-2000:]
    assert re.search(r"^  evaluate: +mAP50-95 \d\.\d{4}, mAP50 \d\.\d{4}", result.stdout, re.M)


def test_make_lint_passes():
    result = subprocess.run(["make", "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
