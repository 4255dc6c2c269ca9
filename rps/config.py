"""Structured configs: every knob with its type, default and allowed values, in one place.

Hydra composes ``conf/config.yaml`` from the groups ``dataset``, ``split``, ``backbone``,
``head``, ``optimizer`` and ``augment``; each group's YAML files extend the schema registered here, so
OmegaConf rejects unknown keys and wrong types, and :func:`validate` rejects values out of
range, all before TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rps.errors import ConfigError

DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
SPLIT_KINDS = ("tutorial", "official")
GROUPINGS = ("none", "clusters", "pattern")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "plateau")
AUGMENTS = ("none", "basic", "strong")
FEATURE_ENGINES = ("xnnpack", "tf")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


@dataclass
class DatasetConfig:
    """Where the labelled images come from (``kind`` picks the loader)."""

    kind: str = MISSING


@dataclass
class TfdsDatasetConfig(DatasetConfig):
    """A TensorFlow Datasets dataset with ``train`` and ``test`` splits."""

    kind: str = "tfds"
    name: str = "rock_paper_scissors"
    # null: the newest prepared version (or the builder's default when downloading).
    version: Optional[str] = None
    # null: $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default).
    data_dir: Optional[str] = None


@dataclass
class ImageFolderConfig(DatasetConfig):
    """A user's folder with one sub-directory of images per class (names = labels)."""

    kind: str = "image_folder"
    path: str = MISSING
    # Optional second folder of the same layout: the dataset's own test set (split=official).
    test_path: Optional[str] = None
    # false: any undecodable image stops the run before training and lists the files;
    # true: such files are left out and their number is logged.
    skip_corrupt: bool = False


@dataclass
class SplitConfig:
    """How examples are divided into train / validation / test.

    ``tutorial``: the dataset's train and test are pooled, shuffled once with ``seed``
    and cut into val / test / rest-for-train (the reference recipe, leak-free).
    ``official``: the dataset's own test set; validation is carved from its train set.
    Sizes below 1 are fractions of the pool they are taken from; sizes of 1 or more are counts.

    Grouped validation (official only): ``group_by`` holds out whole groups of similar training
    images instead of random ones, so validation shows hands training did not (``clusters``:
    k-means on the frozen backbone's features of each class into ``groups`` groups, validation
    taking whole groups of every class; ``pattern``: an image
    folder's file names, the first regex group of ``pattern`` naming the subject). ``folds=K``
    (frozen backbone, cached features) trains K heads, each validated on another 1/K of the
    groups, and a run is then judged by their mean validation accuracy.
    """

    kind: str = "tutorial"
    val_size: float = 600
    test_size: Optional[float] = 400  # tutorial only; must be null for official
    group_by: str = "none"  # none | clusters | pattern
    groups: int = 5  # clusters: how many groups of similar frames each class is cut into
    pattern: Optional[str] = None  # pattern: regex over file names, e.g. '^(\w+?)\d*_' (group 1 = subject)
    folds: int = 1  # 1: one validation carve-out; K >= 2: group K-fold (frozen heads on cached features)


@dataclass
class BackboneConfig:
    """The pretrained feature extractor: a TF Hub handle or a local SavedModel directory."""

    name: str = "mobilenet_v2"
    handle: str = DEFAULT_HANDLE
    image_size: int = 224
    # true: after `epochs` of head training (backbone frozen), unfreeze the top of the backbone and
    # train `fine_tune_epochs` more at optimizer.fine_tune_lr; BatchNorm stays in inference mode.
    trainable: bool = False
    # How much of the backbone to unfreeze, counted from its top: a fraction (< 1) of its
    # trainable variables, or a number (>= 1) of them (a SavedModel exposes variables, not layers).
    fine_tune_from: float = 0.3
    fine_tune_epochs: int = 2


@dataclass
class HeadConfig:
    """The trainable classifier on top of the backbone's feature vector."""

    dropout: float = 0.5
    hidden_units: int = 0  # 0: no hidden layer (Dropout -> Dense(softmax), the tutorial head)
    l2: float = 0.0  # L2 penalty on the head's Dense kernels (0: none)


@dataclass
class AugmentConfig:
    """Random changes of the training images (``kind=basic``); never applied at evaluation."""

    kind: str = "none"  # "none", "basic" or "strong" (the option's name; the fields say what is done)
    flip: bool = True  # horizontal flips
    rotation: float = 0.1  # max rotation, as a fraction of a full turn
    zoom: float = 0.1  # max zoom in/out, as a fraction of the image size
    contrast: float = 0.1  # max contrast change factor
    translation: float = 0.0  # max shift, as a fraction of the image size (0: none)
    brightness: float = 0.0  # max brightness change, as a fraction of the value range (0: none)
    saturation: float = 0.0  # max saturation change factor, e.g. 0.3: x0.7 to x1.3 (0: none)
    hue: float = 0.0  # max hue shift, as a fraction of the colour circle, at most 0.5 (0: none)
    # Fine-tuning runs (backbone.trainable=true) only: false leaves phase 1 (the head on the frozen
    # backbone) unaugmented, so it can train on cached features, and augments only phase 2.
    head_phase: bool = True


@dataclass
class OptimizerConfig:
    """Optimizer name and its hyper-parameters."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    # "none": constant lr; "cosine": cosine decay to 0 over all epochs; "plateau": halve the lr
    # when val_loss has not improved for an epoch.
    schedule: str = "none"
    fine_tune_lr: float = 1e-5  # learning rate of the fine-tuning phase (backbone.trainable=true)


@dataclass
class FeatureCacheConfig:
    """Backbone features computed once and reused (see rps/features.py).

    Valid only while the backbone is frozen and images are not augmented: then every run on the
    same data and backbone would compute identical features. With ``backbone.trainable=true`` it
    serves phase 1 (head training on the still-frozen backbone) only; fine-tuning runs on images.
    The logged model is still the full image -> probabilities model.
    """

    enabled: Optional[bool] = None  # null: on whenever valid; false: off; true: on (error if invalid)
    dir: Optional[str] = None  # null: $XDG_CACHE_HOME/rps/features, else ~/.cache/rps/features
    batch_size: int = 64  # images read and preprocessed per step while extracting
    # "xnnpack": a TFLite conversion of the backbone on the XNNPACK delegate (several times
    # faster on CPUs; falls back to tf, logging why, if the backbone does not convert);
    # "tf": TensorFlow itself. The engine is part of the cache key and logged as `feature_engine`.
    engine: str = "xnnpack"


@dataclass
class EarlyStoppingConfig:
    """Stop when validation accuracy stops improving; keep the best epoch's weights."""

    enabled: bool = False
    patience: int = 3  # epochs without a better val_accuracy before stopping
    restore_best_weights: bool = True  # end with the best epoch's weights, stopped early or not


@dataclass
class ExportConfig:
    """Extra forms of the trained model logged with the run."""

    # false: no model is logged (metrics, plots and datasets are): search trials, where the chosen
    # trial is rerun with `python -m rps.run <its values>` to get its model
    model: bool = True
    tflite: bool = False  # also log tflite/model.tflite, checked on the test split
    tflite_quantize: bool = False  # and tflite/model_dynamic_range.tflite (int8 weights)


@dataclass
class SearchConfig:
    """A hyper-parameter search with Optuna (``python -m rps.tune``); ignored by ``rps.run``.

    ``space`` names what to sample: ``lr: {key: optimizer.lr, type: float, low: 1e-4, high: 0.1,
    log: true}``, ``width: {key: head.hidden_units, type: int, low: 0, high: 256, step: 64}`` or
    ``optimizer: {type: categorical, choices: [adam, sgd]}`` (``key``: the config key or group to
    set, by default the entry's name; entries are overridable: ``search.space.lr.high=0.01``).
    The objective is always the validation accuracy (``best_val_accuracy``); trials are pruned on
    per-epoch validation accuracy.
    """

    study: Optional[str] = None  # the study's name (null: experiment_name)
    trials: int = 20  # trials of the whole study, across all its workers
    sampler: str = "tpe"  # tpe | random
    seed: Optional[int] = 0  # the sampler's seed (null: unseeded)
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 5  # median: trials that finish before any is pruned
    warmup_epochs: int = 2  # median: epochs a trial runs before it can be pruned
    storage: Optional[str] = None  # null: sqlite:///<mlruns_dir>/optuna.db; a database URL for many workers
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """The whole run. Top-level knobs are the ones a user changes most."""

    dataset: DatasetConfig = MISSING
    split: SplitConfig = MISSING
    backbone: BackboneConfig = MISSING
    head: HeadConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    augment: AugmentConfig = MISSING
    epochs: int = 2
    batch_size: int = 64
    # Seeds the split, the shuffling of training batches, weight init and dropout.
    seed: int = 42
    experiment_name: str = "rps"
    run_name: Optional[str] = None  # null: derived from the main hyper-parameters
    # null: $MLFLOW_TRACKING_URI, else sqlite:///<launch dir>/mlruns/mlflow.db
    tracking_uri: Optional[str] = None
    # Local store folder (database and artifacts) used when no tracking URI is given.
    mlruns_dir: str = "mlruns"
    num_samples: int = 10  # test images drawn in sample_predictions.png
    label_smoothing: float = 0.0  # of the one-hot targets in the cross-entropy (0: none)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # Register the logged model under this name in the MLflow Model Registry (null: don't).
    register_model: Optional[str] = None
    # Nest this run under that MLflow run (same experiment). A multirun sets it for every job to
    # its sweep's parent run, so it travels with the job to whatever machine runs it.
    parent_run_id: Optional[str] = None
    search: SearchConfig = field(default_factory=SearchConfig)


def register_configs() -> None:
    """Register the schemas the YAML files in ``conf/`` extend (``defaults: [/schema/<group>@_here_]``).

    They live in their own ``schema`` group, so Hydra's "Available options" of a group lists only
    the real options.
    """
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, node in (("dataset_tfds", TfdsDatasetConfig), ("dataset_image_folder", ImageFolderConfig),
                       ("split", SplitConfig), ("backbone", BackboneConfig), ("head", HeadConfig),
                       ("optimizer", OptimizerConfig), ("augment", AugmentConfig)):
        cs.store(group="schema", name=name, node=node)


def augmented(cfg: DictConfig, phase: int) -> bool:
    """Whether phase 1 (the head on the frozen backbone, a frozen run's only phase) or phase 2
    (fine-tuning) trains on augmented images."""
    return cfg.augment.kind != "none" and (phase == 2 or cfg.augment.head_phase)


# Why phase 2 never uses the feature cache (logged as the run's tag `feature_cache_fine_tune`).
PHASE2_CACHE = "off: fine-tuning trains the backbone, so its features change every step"


def _cache_blocked(cfg: DictConfig) -> Optional[str]:
    """Why cached features would be wrong for phase 1, or None when they are exact."""
    if augmented(cfg, 1):
        return f"training images are augmented (augment={cfg.augment.kind})"
    return None


def feature_cache_plan(cfg: DictConfig) -> tuple[bool, str]:
    """Whether phase 1 trains the head on cached backbone features, and the reason logged.

    The one statement of the rule: phase 1 (a frozen run's only phase) sees the frozen backbone,
    so its features are exactly the cached ones unless the head's images are augmented; phase 2
    (fine-tuning) changes the backbone every step and never uses the cache (:data:`PHASE2_CACHE`).
    """
    blocked = _cache_blocked(cfg)
    if blocked:
        return False, f"off: {blocked}"
    if cfg.feature_cache.enabled is False:
        return False, "off: feature_cache.enabled=false"
    if cfg.backbone.trainable:
        return True, "on for phase 1: the backbone is still frozen and the head's images are not augmented"
    return True, "on: frozen backbone, no augmentation"


def _size_problem(value: Optional[float]) -> Optional[str]:
    if value is None or not math.isfinite(value) or value <= 0:
        return "must be a fraction in (0, 1) or a whole count >= 1"
    if value >= 1 and value != int(value):
        return "a size of 1 or more is a count and must be a whole number"
    return None


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Keys the schema does not know: Hydra's ``+key=value`` appends them even to a closed schema,
    so a typo such as ``+head.dropuot=0.2`` would otherwise be silently ignored."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if path == "hydra":  # Hydra's own config, present in a callback's view of the config
            continue
        if known is not None and key not in known:
            out.append((path, node[key], f"no such key; {prefix.rstrip('.') or 'the top level'} has "
                                         f"{', '.join(sorted(known))}"))
        elif isinstance(node._get_node(key), DictConfig):
            out += _unknown_keys(node[key], f"{path}.")
    return out


def _regex_problem(pattern: str) -> Optional[str]:
    try:
        re.compile(pattern)
    except re.error as err:
        return f"not a valid regex ({err})"
    return None


def _space_problem(spec: Any) -> Optional[str]:
    """What is wrong with one search-space entry, or None."""
    kinds = "{[key,] type: float|int, low, high[, log, step]} or {[key,] type: categorical, choices: [...]}"
    if not isinstance(spec, DictConfig) or spec.get("type") not in ("float", "int", "categorical"):
        return kinds
    if set(spec) - {"key", "type", "low", "high", "log", "step", "choices"}:
        return f"unknown fields {sorted(set(spec) - {'key', 'type', 'low', 'high', 'log', 'step', 'choices'})}; {kinds}"
    if spec.type == "categorical":
        return None if spec.get("choices") else "a categorical needs a non-empty choices list"
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        return f"{spec.type} needs numbers low < high"
    if spec.get("log") and low <= 0:
        return "log: true needs low > 0"
    return None


def _problems(cfg: DictConfig) -> list[tuple[str, Any, str]]:
    """Every (key, value, what is allowed) that is wrong in ``cfg``."""
    out: list[tuple[str, Any, str]] = _unknown_keys(cfg)

    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            out.append((key, OmegaConf.select(cfg, key), allowed))

    ds = cfg.dataset
    own_fields = {"tfds": "name", "image_folder": "path"}
    fields = set(ds.keys())  # (`in` would skip a field whose value is still ??? / missing)
    need("dataset.kind", ds.kind in own_fields and own_fields[ds.kind] in fields,
         "set by choosing the group option instead: dataset=rock_paper_scissors or dataset=image_folder")
    if ds.kind == "tfds" and "name" in fields:
        need("dataset.name", bool(ds.name), "a TFDS dataset name such as rock_paper_scissors")
    if ds.kind == "image_folder" and "path" in fields:
        need(
            "dataset.path",
            not OmegaConf.is_missing(ds, "path") and bool(ds.path),
            "a folder with one sub-directory of images per class, e.g. dataset.path=/data/hands",
        )

    sp = cfg.split
    need("split.kind", sp.kind in SPLIT_KINDS, f"one of {', '.join(SPLIT_KINDS)}")
    problem = _size_problem(sp.val_size)
    need("split.val_size", problem is None, problem or "")
    if sp.kind == "tutorial":
        problem = _size_problem(sp.test_size)
        need("split.test_size", problem is None, problem or "")
    elif sp.kind == "official":
        need(
            "split.test_size",
            sp.test_size is None,
            "null: the official split uses the dataset's own test set",
        )

    need("split.group_by", sp.group_by in GROUPINGS and (sp.group_by == "none" or sp.kind == "official"),
         f"one of {', '.join(GROUPINGS)}; grouped validation needs split=official (the test split stays the dataset's)")
    need("split.groups", sp.groups >= 2, "an integer >= 2")
    need("split.pattern", sp.group_by != "pattern" or (bool(sp.pattern) and _regex_problem(sp.pattern) is None
                                                         and cfg.dataset.kind == "image_folder"),
         f"a regex over file names whose first group is the subject (with dataset=image_folder)"
         f"{': ' + _regex_problem(sp.pattern) if sp.pattern and _regex_problem(sp.pattern) else ''}")
    need("split.folds", sp.folds >= 1, "an integer >= 1")
    need("split.folds", sp.folds == 1 or (feature_cache_plan(cfg)[0] and not cfg.backbone.trainable),
         "1 unless the head trains on cached features of the frozen backbone (folds train K heads on them)")

    bb = cfg.backbone
    need("backbone.handle", bool(bb.handle), "a TF Hub URL or a local SavedModel directory")
    need("backbone.image_size", 32 <= bb.image_size <= 1024, "an integer in [32, 1024] (224 for MobileNet-V2)")
    problem = _size_problem(bb.fine_tune_from)
    need("backbone.fine_tune_from", problem is None, (problem or "").replace("count", "number of variables"))
    need("backbone.fine_tune_epochs", bb.fine_tune_epochs >= 1, "an integer >= 1")

    need("head.dropout", 0 <= cfg.head.dropout < 1, "a rate in [0, 1)")
    need("head.hidden_units", cfg.head.hidden_units >= 0, "0 (no hidden layer) or a positive width")
    need("head.l2", math.isfinite(cfg.head.l2) and cfg.head.l2 >= 0, "a penalty >= 0 (0: none)")

    opt = cfg.optimizer
    need("optimizer.name", opt.name in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
    need("optimizer.lr", math.isfinite(opt.lr) and opt.lr > 0, "a finite learning rate > 0, e.g. 1e-3")
    need("optimizer.momentum", 0 <= opt.momentum < 1, "a value in [0, 1)")
    need("optimizer.schedule", opt.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
    need("optimizer.fine_tune_lr", math.isfinite(opt.fine_tune_lr) and opt.fine_tune_lr > 0, "a learning rate > 0, e.g. 1e-5")
    need("label_smoothing", 0 <= cfg.label_smoothing < 1, "a value in [0, 1)")
    aug = cfg.augment
    need("augment.kind", aug.kind in AUGMENTS, f"one of {', '.join(AUGMENTS)}")
    for key in ("rotation", "zoom", "contrast", "translation", "brightness", "saturation"):
        need(f"augment.{key}", 0 <= aug[key] < 1, "a fraction in [0, 1)")
    need("augment.hue", 0 <= aug.hue <= 0.5, "a fraction of the colour circle in [0, 0.5]")
    need("augment.head_phase", aug.head_phase or bb.trainable,
         "true unless backbone.trainable=true (false augments only the fine-tuning phase)")
    need("early_stopping.patience", cfg.early_stopping.patience >= 1, "an integer >= 1")

    need("epochs", cfg.epochs >= 1, "an integer >= 1")
    need("batch_size", cfg.batch_size >= 1, "an integer >= 1")
    need("seed", cfg.seed >= 0, "an integer >= 0")
    need("num_samples", cfg.num_samples >= 0, "an integer >= 0 (0 draws no sample grid)")
    need("experiment_name", bool(cfg.experiment_name), "a non-empty MLflow experiment name")
    need("register_model", not (cfg.register_model and not cfg.export.model),
         "null while export.model=false (no model is logged to register)")
    need("feature_cache.batch_size", cfg.feature_cache.batch_size >= 1, "an integer >= 1")
    need("feature_cache.engine", cfg.feature_cache.engine in FEATURE_ENGINES, f"one of {', '.join(FEATURE_ENGINES)}")
    se = cfg.search
    need("search.trials", se.trials >= 1, "an integer >= 1")
    need("search.sampler", se.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}")
    need("search.pruner", se.pruner in PRUNERS, f"one of {', '.join(PRUNERS)}")
    need("search.startup_trials", se.startup_trials >= 0, "an integer >= 0")
    need("search.warmup_epochs", se.warmup_epochs >= 0, "an integer >= 0")
    for key, spec in se.space.items():
        problem = _space_problem(spec)
        need(f"search.space.{key}", problem is None, problem or "")
    need("feature_cache.enabled", not (cfg.feature_cache.enabled and _cache_blocked(cfg)),
         f"null or false: {_cache_blocked(cfg)}, so their features change every epoch (in a fine-tuning "
         "run, augment.head_phase=false keeps phase 1 unaugmented)")
    return out


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every out-of-range value in ``cfg``."""
    problems = _problems(cfg)
    if problems:
        lines = "; ".join(f"{key}={value!r} (allowed: {allowed})" for key, value, allowed in problems)
        raise ConfigError(
            f"Invalid configuration: {lines}. Change the value on the command line "
            "(for example `python -m rps.run head.dropout=0.5`) or in the YAML under conf/."
        )


def resolve_size(size: float, total: int) -> int:
    """The fraction-or-count rule of split sizes and ``backbone.fine_tune_from``: a value below 1
    is a fraction of ``total`` (rounded, at least 1), a value of 1 or more a count.
    :func:`_size_problem` is its validation."""
    return max(1, round(size * total)) if size < 1 else int(size)
