"""Config composition: every group and preset composes; typos, wrong types and bad values fail clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF_DIR, REPO, UNTRACKED, run_train
from sentinel.config.schema import Mode
from sentinel.config.validate import typed_config, validate
from sentinel.errors import ConfigError

GROUPS = ["datasets", "augmentation", "search_space", "hardware", "model", "tracking", "experiment", "paths"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    validate(cfg)
    assert cfg.mode.value == "prep"


def test_several_datasets_compose_with_their_own_schema(compose_cfg):
    cfg = compose_cfg("datasets=[coco,guns,knife,parcel]", "mode=tune", "hardware.gpu_per_trial=0.5")
    assert list(cfg.datasets) == ["coco", "guns", "knife", "parcel"]
    assert cfg.datasets.coco.max_samples == 3000 and cfg.datasets.coco.classes == ["person"]
    assert (cfg.datasets.guns.workspace, cfg.datasets.guns.project, cfg.datasets.guns.version) == (
        "liteye-systems",
        "weapon-classification",
        2,
    )
    assert cfg.hardware.gpu_per_trial == 0.5


def test_notebook_preset_has_the_notebooks_settings(compose_cfg):
    cfg = compose_cfg("experiment=notebook")
    assert set(cfg.datasets) == {"coco", "guns", "knife", "parcel"}
    assert len(cfg.search_space) == 21 and "copy_paste" not in cfg.search_space  # it cannot act on boxes
    assert (cfg.model.epochs, cfg.model.patience, cfg.tune.epochs, cfg.tune.grace_period) == (500, 25, 25, 10)
    assert cfg.hardware.gpu_per_trial == 1 and cfg.model.output_name == "sentinel_default_v2.pt"


def test_default_augmentation_equals_ultralytics_defaults(compose_cfg):
    from ultralytics.cfg import DEFAULT_CFG_DICT

    augmentation = compose_cfg().augmentation
    assert {k: DEFAULT_CFG_DICT[k] for k in augmentation} == dict(augmentation)


COMPOSE_ERRORS = [
    ("typo_in_dataset_key", ["datasets=[guns]", "datasets.guns.workspcae=x"], ConfigCompositionException, "workspcae"),
    ("typo_top_level", ["mdoe=tune"], ConfigCompositionException, "mdoe"),
    ("wrong_type", ["model.epochs=many"], ConfigCompositionException, "model.epochs"),
    ("wrong_type_fraction", ["hardware.gpu_per_trial=half"], ConfigCompositionException, "gpu_per_trial"),
    ("unknown_dataset", ["datasets=[coco,cocoo]"], MissingConfigException, "datasets/cocoo"),
    ("unknown_mode", ["mode=tunee"], ConfigCompositionException, "tunee"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "text"), [r[1:] for r in COMPOSE_ERRORS], ids=[r[0] for r in COMPOSE_ERRORS]
)
def test_bad_overrides_fail_while_composing(compose_cfg, overrides, error, text):
    with pytest.raises(error) as raised:
        compose_cfg(*overrides)
    chain = f"{raised.value} {raised.value.__cause__}"
    assert text in chain


def test_unknown_key_in_a_group_file_names_the_file_and_key(compose_cfg, tmp_path):
    (tmp_path / "extra" / "hardware").mkdir(parents=True)
    (tmp_path / "extra" / "hardware" / "mine.yaml").write_text("device: cpu\nwrokers: 2\n")
    with pytest.raises(ConfigCompositionException) as raised:
        compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "hardware=mine")
    assert "In 'hardware/mine'" in str(raised.value) and "full_key: hardware.wrokers" in str(raised.value)


VALUE_ERRORS = [
    ("low_not_below_high", ["search_space.lr0.low=0.5", "search_space.lr0.high=0.1"], "search_space.lr0.low"),
    ("unknown_distribution", ["search_space.lr0.dist=gaussian"], "search_space.lr0.dist"),
    ("choice_without_values", ["+search_space.optimizer={dist: choice}"], "search_space.optimizer.values"),
    ("typo_in_space_entry", ["+search_space.lr0.hihg=0.2"], "search_space.lr0.hihg"),
    ("wrong_type_in_space", ["search_space.lr0.low=small"], "search_space.lr0.low"),
    ("space_entry_not_a_mapping", ["+search_space.momentum2=0.9"], "search_space.momentum2"),
    ("loguniform_from_zero", ["search_space.lr0.dist=loguniform", "search_space.lr0.low=0"], "search_space.lr0.low"),
    ("grace_not_below_epochs", ["tune.epochs=3", "tune.grace_period=3"], "tune.grace_period"),
    ("uneven_gpu_fraction", ["hardware.gpu_per_trial=0.3"], "hardware.gpu_per_trial"),
    ("two_gpus_per_trial", ["hardware.gpu_per_trial=2"], "hardware.gpu_per_trial"),
    ("engine_on_cpu", ["export.formats=[engine]"], "export.formats"),
    ("unknown_search_alg", ["tune.search_alg=grid"], "tune.search_alg"),
    ("no_dataset", ["datasets=[]"], "datasets"),
    ("bad_weights", ["model.weights=yolov8n.onnx"], "model.weights"),
    ("bad_link_mode", ["merge.link=reflink"], "merge.link"),
    ("include_and_exclude", ["merge.include=[gun]", "merge.exclude=[gun]"], "merge.include"),
    ("balance_target_below_one", ["merge.balance_target_ratio=0.5"], "merge.balance_target_ratio"),
    ("class_weights_over_one", ["training.class_weights=2"], "training.class_weights"),
    ("inspect_iou_zero", ["inspect.iou=0"], "inspect.iou"),
    ("inspect_port_out_of_range", ["inspect.port=70000"], "inspect.port"),
]


@pytest.mark.parametrize(("overrides", "key"), [r[1:] for r in VALUE_ERRORS], ids=[r[0] for r in VALUE_ERRORS])
def test_out_of_range_values_fail_validation_naming_the_key(compose_cfg, overrides, key):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    assert raised.value.key == key and f"'{key}'" in str(raised.value)


def test_missing_required_value_fails_naming_the_key(compose_cfg, tmp_path):
    (tmp_path / "extra" / "datasets").mkdir(parents=True)
    (tmp_path / "extra" / "datasets" / "mine.yaml").write_text(
        "# @package datasets\ndefaults:\n  - /sentinel/source/yolo@mine\n  - _self_\nmine: {}\n"
    )
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "datasets=[demo,mine]")
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    assert raised.value.key == "datasets.mine.path" and "required" in str(raised.value)


CLI_ERRORS = [
    ("typo", ["datasets.guns.workspcae=x", "datasets=[guns]"], "workspcae"),
    ("unknown_mode", ["mode=tunee"], f"expected one of [{', '.join(m.value for m in Mode)}]"),
    ("unknown_dataset_lists_options", ["datasets=[coco,cocoo]"], "Available options in 'datasets': coco, demo"),
    ("wrong_type", ["model.epochs=abc"], "model.epochs"),
    ("cfg_with_multirun", ["-m", "model=yolov8n,yolov8s"], "Only one of --run, --multirun, --cfg"),
]


@pytest.mark.parametrize(("args", "text"), [r[1:] for r in CLI_ERRORS], ids=[r[0] for r in CLI_ERRORS])
def test_cli_errors_are_one_message_without_traceback(tmp_path, args, text):
    result = run_train(["--cfg", "job", *args], cwd=tmp_path)
    assert result.returncode == 1
    assert text in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_yaml_names_file_and_line(tmp_path):
    extra = tmp_path / "extra" / "hardware"
    extra.mkdir(parents=True)
    (extra / "broken.yaml").write_text("device: cpu\nworkers: [1, 2\n")
    result = run_train(
        ["--cfg", "job", f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "hardware=broken"], cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"{extra / 'broken.yaml'}:3:" in result.stderr and "malformed YAML" in result.stderr
    assert "Traceback" not in result.stderr


STAGE_ERRORS = [
    ("evaluate_with_nothing_to_evaluate", ["mode=evaluate"], "no finished finetune run on this dataset found"),
    ("pretrained_weights_offline", ["mode=finetune", "model=yolov8n"], "use model=yolov8n_scratch"),
    (
        "hparams_from_nothing",
        ["mode=finetune", "model=yolov8n_scratch", "finetune.hparams_from=/nowhere"],
        "finetune.hparams_from",
    ),
]


@pytest.mark.parametrize(("args", "text"), [r[1:] for r in STAGE_ERRORS], ids=[r[0] for r in STAGE_ERRORS])
def test_stage_input_errors_are_one_clear_message(tmp_path, args, text):
    result = run_train(
        [*args, UNTRACKED, f"data_dir={tmp_path}/data", "merge.samples_grid=0"],
        cwd=tmp_path,
        env={"YOLO_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert text in result.stderr
    assert "Traceback" not in result.stderr
    if text == "finetune.hparams_from":  # a folder needs no dataset: refused before prep (a download, the first time)
        assert not (tmp_path / "data" / "merged").exists()


def test_cfg_job_prints_config_without_importing_heavy_libraries(tmp_path):
    probe = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('torch', 'ultralytics', 'ray', 'fiftyone')"
        " if m in sys.modules)))\n"
        f"sys.argv = ['train.py', '--cfg', 'job', 'datasets=[coco,guns,knife,parcel]', 'mode=tune',"
        " 'hardware.gpu_per_trial=0.5']\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "gpu_per_trial: 0.5" in result.stdout and "workspace: liteye-systems" in result.stdout
    assert "HEAVY=\n" in result.stdout, result.stdout[-300:]


def test_help_does_not_import_heavy_libraries(tmp_path):
    probe = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('torch', 'ultralytics', 'ray', 'fiftyone')"
        " if m in sys.modules)))\n"
        "sys.argv = ['train.py', '--help']\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert "datasets:     coco, demo, guns, knife, parcel" in result.stdout
    assert "HEAVY=\n" in result.stdout


def test_help_is_short_and_lists_every_mode_and_group_but_no_internal_one(tmp_path):
    result = run_train(["--help"], cwd=tmp_path)
    assert result.returncode == 0 and len(result.stdout.splitlines()) < 120
    modes = result.stdout.split("== Modes")[1].split("==")[1]
    assert sorted(line.split()[0] for line in modes.splitlines() if line.strip()) == sorted(m.value for m in Mode)
    groups = result.stdout.split("== Config groups")[1].split("==")[1]
    listed = {line.split(":")[0].strip() for line in groups.splitlines() if line.strip()}
    assert listed == {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"}  # no sentinel/source
    assert "python train.py experiment=demo mode=all" in result.stdout and "README.md" in result.stdout


def test_run_folder_has_resolved_config_and_log_and_no_secret(tmp_path):
    secret = "fake-secret-key-9f8e7d6c"
    run_dir = tmp_path / "run"
    result = run_train(
        ["mode=prep", UNTRACKED, f"data_dir={tmp_path}/data", f"hydra.run.dir={run_dir}"],  # MLflow: test_tracking
        cwd=tmp_path,
        env={"ROBOFLOW_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "config_resolved.yaml").is_file()
    assert "mode: prep" in (run_dir / "config_resolved.yaml").read_text()
    assert "prep:" in (run_dir / "train.log").read_text()
    leaks = [p for p in Path(tmp_path).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in result.stdout + result.stderr


def test_an_unexpected_skip_fails_the_session(tmp_path):
    """conftest turns a skip without the expected-here reason into a failed run (CI must not pass it quietly)."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "from conftest import EXPECTED_SKIP\n\n"
        "def test_quietly_skipped():\n    pytest.skip('module imported too early')\n\n"
        "def test_expected():\n    pytest.skip(EXPECTED_SKIP + 'no CUDA device on this machine')\n"
    )
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null", str(tmp_path)]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "UNEXPECTED SKIP: " in result.stdout and "test_quietly_skipped" in result.stdout
    assert "UNEXPECTED SKIP: test_skips.py::test_expected" not in result.stdout


def test_class_weights_reach_ultralytics_as_cls_pw_and_are_absent_when_off(compose_cfg):
    """training.class_weights is Ultralytics' cls_pw; off, the arguments (and earlier runs' keys) are unchanged."""
    from sentinel.runtime.ultra import fixed_training_args

    def fixed(*overrides: str) -> dict:
        cfg = typed_config(compose_cfg(*overrides))
        return fixed_training_args(cfg.augmentation, cfg.model, cfg.training, cfg.seed)

    assert "cls_pw" not in fixed()
    assert fixed("training.class_weights=0.5")["cls_pw"] == 0.5


def test_two_runs_started_in_the_same_second_get_a_folder_each(tmp_path):
    """Hydra's default run folder is named to the second; the second run of that second gets `-2`."""
    from sentinel.config.resolvers import fresh_run_dir

    base = str(tmp_path / "outputs" / "2026-12-06" / "10-00-00")
    assert [fresh_run_dir(base) for _ in range(3)] == [base, f"{base}-2", f"{base}-3"]
    assert all(Path(p).is_dir() for p in (base, f"{base}-2", f"{base}-3"))  # claimed by creating it
    config = (CONF_DIR / "config.yaml").read_text()
    assert "dir: ${sentinel.fresh_run_dir:${paths.runs}/${now:%Y-%m-%d}/${now:%H-%M-%S}}" in config


def test_stages_get_the_schemas_dataclasses_and_every_cache_key_is_as_the_composed_configs(compose_cfg):
    """The pipeline hands the stages typed_config(cfg): sources as their type's dataclass, enums as enums. What
    a cache key or `tune.resume` hashes must not change with the form, or every earlier run would look new."""
    from sentinel.config.schema import OnBadLabel, RoboflowSource, SentinelConfig
    from sentinel.dataset.sources import source_folder
    from sentinel.runtime.fingerprint import stable_hash

    composed = compose_cfg("experiment=notebook", "datasets=[coco,guns,knife,parcel]")
    typed = typed_config(composed)
    assert isinstance(typed, SentinelConfig) and isinstance(typed.datasets["guns"], RoboflowSource)
    assert typed.merge.on_bad_label is OnBadLabel.skip_line and isinstance(typed.search_space["lr0"], dict)
    assert stable_hash(typed) == stable_hash(composed)
    for name, source in typed.datasets.items():
        assert source_folder(Path("/d"), name, source) == source_folder(Path("/d"), name, composed.datasets[name])
