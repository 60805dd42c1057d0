"""Typed schemas for every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `sentinel_schema` first in its defaults, so every group merged after it is checked
against these dataclasses: an unknown key or a wrong type fails while the config is composed, with the full
dotted key and the YAML file in Hydra's message. Dataset entries are typed per source (`type:`) through
`conf/datasets/*.yaml`, which pull their schema in with `- /sentinel/source/<type>@<name>`.

This module must stay light: `train.py --cfg job` and `--help` import it, and they must not import torch,
ultralytics, ray or fiftyone (see benchmarks/startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sentinel.config.plain import plain


class Mode(str, Enum):
    """What `train.py` does. `all` runs every stage in order; `doctor` checks what the others will need."""

    prep = "prep"
    tune = "tune"
    finetune = "finetune"
    export = "export"
    evaluate = "evaluate"
    all = "all"
    doctor = "doctor"
    compare = "compare"
    inspect = "inspect"
    predict = "predict"


class OnBadLabel(str, Enum):
    """What prep does with a label line that fails validation."""

    skip_line = "skip_line"
    skip_image = "skip_image"
    fail = "fail"


class Balance(str, Enum):
    """How prep evens out classes in the training split (sentinel.dataset.balance)."""

    none = "none"
    oversample = "oversample"


# --- datasets: one schema per source type -------------------------------------------------------------

# Ultralytics' optimizer names (BaseTrainer.build_optimizer matches them case-insensitively).
OPTIMIZERS = ("SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "auto")


@dataclass
class SourceConfig:
    """Fields every source type has."""

    type: str = MISSING
    # Overrides the cache folder's name under data_dir/sources/; empty means the dataset's key.
    cache_name: str = ""


@dataclass
class RoboflowSource(SourceConfig):
    """A dataset version on Roboflow, downloaded with the SDK. The API key comes from ROBOFLOW_API_KEY only."""

    type: str = "roboflow"
    workspace: str = MISSING
    project: str = MISSING
    version: int = MISSING
    format: str = "yolov8"
    timeout_s: float = 600.0
    retries: int = 3


@dataclass
class CocoSource(SourceConfig):
    """COCO-2017 through the FiftyOne zoo (needs MongoDB)."""

    type: str = "coco"
    classes: list[str] = field(default_factory=lambda: ["person"])
    max_samples: int | None = None
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    only_matching: bool = True
    test_fraction: float = 0.5
    seed: int = 0
    database_uri: str = ""
    zoo_dir: str = ""


@dataclass
class YoloSource(SourceConfig):
    """A local folder (or data.yaml file) in YOLO format. It is only ever read."""

    type: str = "yolo"
    path: str = MISSING


@dataclass
class DemoSource(SourceConfig):
    """Synthetic shapes generated deterministically from a seed, in the layout of a real export."""

    type: str = "demo"
    layout: str = "roboflow"
    names: list[str] = field(default_factory=lambda: ["person", "gun"])
    seed: int = 0
    imgsz: int = 96
    train: int = 48
    val: int = 12
    test: int = 12


SOURCE_SCHEMAS: dict[str, type[SourceConfig]] = {
    "roboflow": RoboflowSource,
    "coco": CocoSource,
    "yolo": YoloSource,
    "demo": DemoSource,
}


# --- merge / prep ---------------------------------------------------------------------------------------


@dataclass
class MergeConfig:
    """How sources become one YOLO dataset (one class space by name)."""

    aliases: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    on_bad_label: OnBadLabel = OnBadLabel.skip_line
    keep_unlabeled_images: bool = True
    drop_leaks: bool = True
    link: str = "hardlink"
    workers: int = 4
    samples_grid: int = 16
    balance: Balance = Balance.none
    balance_target_ratio: float = 2.0
    balance_warn_ratio: float = 10.0


# --- augmentation: Ultralytics' own defaults (ultralytics/cfg/default.yaml) -----------------------------


@dataclass
class AugmentationConfig:
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    bgr: float = 0.0
    mosaic: float = 1.0
    mixup: float = 0.0
    cutmix: float = 0.0
    copy_paste: float = 0.0
    copy_paste_mode: str = "flip"
    auto_augment: str = "randaugment"
    erasing: float = 0.4
    close_mosaic: int = 10


# --- search space ---------------------------------------------------------------------------------------


@dataclass
class ParamSpace:
    """One tunable training argument: `dist` is uniform, loguniform, randint or choice."""

    dist: str = "uniform"
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None


# --- hardware -------------------------------------------------------------------------------------------


@dataclass
class HardwareConfig:
    device: str = "cpu"
    workers: int = 0
    cpu_per_trial: float = 1.0
    gpu_per_trial: float = 0.0
    max_concurrent_trials: int = 2
    ray_address: str = ""
    num_cpus: int | None = None
    num_gpus: int | None = None
    max_failures: int = 0  # retries of a trial that dies (its node lost), from its last checkpoint
    dataset_sync: bool = False  # copy the merged dataset to cluster nodes that lack it (no shared disk)
    storage_path: str = ""  # Ray Tune's experiment storage (shared path, s3://, gs://); "" = the run folder


# --- model ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    weights: str = "yolov8n.pt"
    imgsz: int = 640
    batch: int = 16
    epochs: int = 100
    patience: int = 100
    output_name: str = "sentinel.pt"


@dataclass
class TrainingConfig:
    """Training settings that are neither augmentation nor the model's size (tune and fine-tune share them)."""

    class_weights: float = 0.0  # Ultralytics' cls_pw: class-loss weight (1 / training boxes) ** p, 0 = off
    optimizer: str = "SGD"  # Ultralytics' names; `auto` ignores lr0 and momentum (see conf/config.yaml)


# --- stage settings (the issues for tune/finetune/export/evaluate fill these in) ------------------------


@dataclass
class TuneConfig:
    num_samples: int = 8
    epochs: int = 10
    grace_period: int = 2
    reduction_factor: int = 3
    search_alg: str = "random"
    metric: str = "metrics/mAP50-95(B)"
    mode: str = "max"
    resume: str = ""


@dataclass
class FinetuneConfig:
    hparams_from: str = ""
    resume: bool = False


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["torchscript"])
    weights: str = "latest"


@dataclass
class EvaluateConfig:
    split: str = "test"
    compare_to: str = ""
    weights: str = "latest"


@dataclass
class InspectConfig:
    """mode=inspect: where the detector fails, in FiftyOne (sentinel.stages.inspection)."""

    iou: float = 0.5
    gallery: int = 12
    worst: int = 10
    app: bool = False
    address: str = "127.0.0.1"
    port: int = 5151
    persistent: bool = False
    database_uri: str = ""


@dataclass
class CompareConfig:
    """mode=compare: which earlier runs, and by which metric (sentinel.stages.compare)."""

    runs: int = 10
    experiment: str = ""
    sweep: str = ""
    metric: str = "test/map50-95"
    all_keys: bool = False  # list every differing key, not the preset's name for the keys that change with it


@dataclass
class PredictConfig:
    """mode=predict: the detector on images, folders, videos and streams, with alerts (sentinel.stages.predict)."""

    source: str = ""  # an image, a folder, a glob, a video, an rtsp:// or http:// stream, or a camera index
    weights: str = "latest"  # latest, a finetune run folder, a .pt, an export (.onnx, ...) or models:/<name>/<v>
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int | None = None  # None: the size the weights were trained at
    classes: list[str] = field(default_factory=list)  # only these classes; empty: all
    save_annotated: bool = False
    vid_stride: int = 1
    alert: dict[str, float] = field(default_factory=dict)  # class → confidence threshold
    alert_min_frames: int = 3
    tracker: str = "bytetrack.yaml"
    timeout_s: float = 10.0  # how long a stream or camera may take to give its first frame


class TrackingBackend(str, Enum):
    mlflow = "mlflow"
    none = "none"


@dataclass
class TrackingConfig:
    """Where runs are recorded (sentinel.runtime.tracking)."""

    backend: TrackingBackend = TrackingBackend.mlflow
    uri: str = ""  # "" = local SQLite store outputs/mlflow.db; or http://host:5000
    experiment: str = ""  # "" = the experiment preset's name, else "sentinel"
    register_model: bool = True
    timeout_s: float = 10.0
    wait: bool = False  # True: wait at the end until MLflow has the run, however short the command


@dataclass
class PathsConfig:
    """Where runs, sweeps and the local MLflow store live; relative to the launch folder (conf/paths/)."""

    runs: str = "outputs"  # one folder per run: <runs>/<date>/<time>
    sweeps: str = "multirun"  # one folder per sweep: <sweeps>/<date>/<time>/<job>
    tracking: str = "outputs"  # the local MLflow store (tracking.uri ""): mlflow.db and mlartifacts/


@dataclass
class SentinelConfig:
    mode: Mode = Mode.prep
    seed: int = 0
    data_dir: str = "data"
    paths: PathsConfig = field(default_factory=PathsConfig)
    datasets: dict[str, Any] = field(default_factory=dict)
    merge: MergeConfig = field(default_factory=MergeConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # Entries are checked against ParamSpace by sentinel.config.validate (not while composing): 22 typed nodes
    # made every `--cfg job` ~20 ms slower, see benchmarks/startup.py.
    search_space: dict[str, Any] = field(default_factory=dict)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


# Dict-valued settings whose keys are the user's (class names), not the schema's. OmegaConf rejects new keys
# in any node under a struct-mode root, so Hydra's `merge.aliases='{handgun: gun}'` failed with "Key
# 'handgun' is not in struct" (omry/omegaconf#461); these nodes alone are opened, the rest stays strict.
FREE_FORM_DICTS = ("merge.aliases", "predict.alert")


def register_configs() -> None:
    """Put the schemas where `conf/` refers to them. Safe to call more than once."""
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    cs.store(name="sentinel_schema", node=SentinelConfig)
    stored = cs.repo["sentinel_schema.yaml"].node  # the store's own copy: flag it there, no second build
    for key in FREE_FORM_DICTS:
        OmegaConf.set_struct(OmegaConf.select(stored, key), False)
    for type_name, schema in SOURCE_SCHEMAS.items():
        cs.store(group="sentinel/source", name=type_name, node=schema)


# What pins each source type's version: the keys that, unchanged, give the same data.
SOURCE_PINS = {
    "roboflow": ("workspace", "project", "version", "format"),
    "coco": ("splits", "classes", "max_samples", "only_matching"),
    "yolo": ("path",),
    "demo": ("layout", "names", "seed", "train", "val", "test"),
}


def source_pins(cfg: SourceConfig) -> dict[str, Any]:
    """The version-pinning settings of one source config, as plain values."""
    keys = SOURCE_PINS.get(cfg.type, ())
    return {k: plain(getattr(cfg, k)) for k in keys}
