"""Every searched and tuned value reaches the training: read back from Ultralytics' optimizer, schedule, loss and
dataset at the first batch (sentinel.runtime.applied), not from the arguments Sentinel passed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from builders import jpeg_bytes, make_source
from conftest import CONF_DIR
from sentinel.config.schema import register_configs
from sentinel.config.validate import typed_config, validate
from sentinel.errors import ConfigError

SPACE = yaml.safe_load((CONF_DIR / "search_space" / "default.yaml").read_text())
TRIAL_EPOCHS = 10  # tune.epochs' default: the default space's warm-up (up to 5 epochs) fits below epochs - 1


def composed(data_dir: Path, *overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[f"data_dir={data_dir}", *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two classes with different box counts (so class weights act), two batches of 4 per epoch."""
    root = tmp_path_factory.mktemp("applied")
    train = {
        f"t{i}.jpg": (jpeg_bytes(i), "0 0.5 0.5 0.3 0.3\n" + ("1 0.3 0.3 0.2 0.2\n" if i < 2 else "")) for i in range(8)
    }
    val = {f"v{i}.jpg": (jpeg_bytes(100 + i), "0 0.5 0.5 0.3 0.3\n1 0.2 0.2 0.2 0.2\n") for i in range(2)}
    return make_source(root / "src", ["gun", "knife"], {"train": train, "val": val}) / "dataset.yaml"


def trial_args(data_dir: Path, **overrides) -> dict:
    """A default-config trial's fixed arguments (tune.trial.trial_fixed_args) at small sizes."""
    from sentinel.stages.tune.trial import trial_fixed_args

    small = ("model=yolov8n_scratch", "model.imgsz=32", "model.batch=4", f"tune.epochs={TRIAL_EPOCHS}")
    return {**trial_fixed_args(typed_config(composed(data_dir, *small))), **overrides}


@pytest.fixture(scope="module")
def two_ends(dataset, tmp_path_factory):
    """A dry build at both probes of the default search space (search.space_probes), and of class weights."""
    from sentinel.runtime.applied import dry_build
    from sentinel.stages.tune.space import space_probes

    folder = tmp_path_factory.mktemp("ends")
    ends = space_probes(composed(folder, "search_space=default").search_space)
    ends["lower"]["cls_pw"], ends["upper"]["cls_pw"] = 0.0, 1.0
    checks = {}
    for end, values in ends.items():
        args = trial_args(folder, **values)
        checks[end] = dry_build("yolov8n.yaml", dataset, args, TRIAL_EPOCHS, folder / end)
    return ends, checks


@pytest.mark.parametrize("key", [*SPACE, "cls_pw"])
def test_two_values_of_every_searched_key_train_differently_and_as_asked(two_ends, key):
    ends, checks = two_ends
    for end in ("lower", "upper"):
        wrong = [d.describe() for d in checks[end].found if d.key == key]
        assert not wrong, f"{key} in the {end} part is not what Ultralytics applies: {wrong}"
    applied = {end: checks[end].reading.values.get(key) for end in ("lower", "upper")}
    assert None not in applied.values(), f"{key}: Ultralytics has no use for it here: {checks['upper'].reading.reasons}"
    assert applied["lower"] != pytest.approx(applied["upper"]), (
        f"{key}: {ends['lower'][key]} and {ends['upper'][key]} train the same"
    )


def test_the_applied_record_is_written_where_the_training_ran(two_ends):
    _, checks = two_ends
    record = yaml.safe_load(checks["upper"].out.read_text())
    assert record["applied"]["optimizer"] == "SGD" and record["differences"] == []
    assert record["context"]["batches_per_epoch"] == 2


@pytest.mark.parametrize(
    ("asked", "key", "because"),
    [
        ({"optimizer": "auto", "lr0": 0.02}, "lr0", ""),
        ({"optimizer": "AdamW", "warmup_momentum": 0.5}, "warmup_momentum", "no momentum to warm up"),
        ({"close_mosaic": TRIAL_EPOCHS, "mixup": 0.5}, "mixup", "switches it off from the first"),
        ({"copy_paste": 0.5}, "copy_paste", "boxes only"),
        ({"warmup_epochs": 20.0}, "warmup_epochs", "caps warm-up"),
    ],
)
def test_a_value_ultralytics_does_not_apply_is_a_difference_naming_the_key(dataset, tmp_path, asked, key, because):
    from sentinel.runtime.applied import dry_build

    check = dry_build("yolov8n.yaml", dataset, trial_args(tmp_path, **asked), TRIAL_EPOCHS, tmp_path / "dry")
    found = {d.key: d for d in check.found}
    assert key in found and because in found[key].describe(), [d.describe() for d in check.found]


def demo_search_with(tmp_path: Path, extra: str):
    """The demo's search space and one more dimension, for 3-epoch trials at small sizes, as a stage gets it."""
    small = ("model=yolov8n_scratch", "model.imgsz=32", "model.batch=4", "tune.epochs=3", "search_space=demo")
    return typed_config(composed(tmp_path, *small, extra))


def test_a_search_drops_a_key_that_cannot_act_on_box_data_with_a_warning(dataset, tmp_path, caplog):
    from sentinel.stages.tune.search import check_search_applies, without_keys

    cfg = demo_search_with(tmp_path, "+search_space.copy_paste={dist: uniform, low: 0.0, high: 1.0}")
    with caplog.at_level(logging.WARNING, logger="sentinel.stages.tune.search"):
        dropped = check_search_applies(cfg, dataset, tmp_path / "run")
    assert list(dropped) == ["copy_paste"]
    assert "search_space.copy_paste dropped" in caplog.text and "segment masks" in caplog.text
    assert "copy_paste" not in without_keys(cfg, dropped).search_space and "copy_paste" in cfg.search_space


def test_a_search_over_a_value_that_would_not_act_fails_before_it_starts(dataset, tmp_path):
    from sentinel.stages.tune.search import check_search_applies

    cfg = demo_search_with(tmp_path, "+search_space.warmup_epochs={dist: uniform, low: 0.0, high: 5.0}")
    with pytest.raises(ConfigError) as error:
        check_search_applies(cfg, dataset, tmp_path / "run")
    assert error.value.key == "search_space.warmup_epochs" and "asked 3.75, applied 2" in str(error.value)


def test_a_trial_closes_mosaic_for_the_fine_tunes_share_of_its_epochs_never_from_the_first():
    from sentinel.stages.tune.trial import trial_close_mosaic

    assert trial_close_mosaic(10, 40, 3) == 1  # the demo: mosaic in 2 of 3 epochs, then a clean one
    assert trial_close_mosaic(10, 100, 10) == 1
    assert trial_close_mosaic(10, 10, 3) == 2  # never the whole trial
    assert trial_close_mosaic(0, 40, 3) == 0 and trial_close_mosaic(10, 40, 1) == 0


# --- refused at start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "names"),
    [
        (["training.optimizer=auto", "search_space=demo"], "training.optimizer", "search_space.lr0"),
        (
            ["search_space=demo", "+search_space.optimizer={dist: choice, values: [SGD, auto]}"],
            "search_space.optimizer",
            "search_space.lr0",
        ),
        (["training.optimizer=Adagrad"], "training.optimizer", "AdamW"),
        (["mode=finetune", "model.epochs=5"], "augmentation.close_mosaic", "model.epochs=5"),
    ],
)
def test_a_value_that_could_never_act_is_refused_at_start_up(tmp_path, overrides, key, names):
    cfg = composed(tmp_path, *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert error.value.key == key and names in str(error.value)


def test_an_optimizer_may_be_searched_and_auto_is_fine_with_nothing_it_replaces(tmp_path):
    validate(composed(tmp_path, "search_space=demo", "+search_space.optimizer={dist: choice, values: [SGD, AdamW]}"))
    validate(composed(tmp_path, "training.optimizer=auto", "search_space=demo", "~search_space.lr0"))
