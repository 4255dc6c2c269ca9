"""Structured configs: every knob of a run with its type, default and allowed values, in one place.

Each group's dataclass is followed by its checks (``Check``: a key, whether its value is allowed,
what is allowed), so a knob's type, default and range are read together. Defaults are written
here only: the YAML files under ``conf/`` choose group options and set what an option changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from rps.model.formats import FORMATS  # the TFLite formats export.formats may name (no TensorFlow import)

DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
SPLIT_KINDS = ("tutorial", "official")
GROUPINGS = ("none", "clusters", "pattern")
GROUP_FEATURES = ("backbone", "colour", "mix")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "plateau")
AUGMENTS = ("none", "basic", "strong")
FEATURE_ENGINES = ("xnnpack", "tf")

Check = tuple[str, bool, str]  # (config key, whether its value is allowed, what is allowed)


def size_problem(value: Optional[float]) -> Optional[str]:
    """What is wrong with a fraction-or-count size (:func:`rps.common.sizes.resolve_size`), or None."""
    if value is None or not math.isfinite(value) or value <= 0:
        return "must be a fraction in (0, 1) or a whole count >= 1"
    if value >= 1 and value != int(value):
        return "a size of 1 or more is a count and must be a whole number"
    return None


def _size_check(key: str, value: Optional[float], count: str = "count") -> Check:
    problem = size_problem(value)
    return key, problem is None, (problem or "").replace("count", count)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> Check:
    return key, value in allowed, f"one of {', '.join(allowed)}"


# --------------------------------------------------------------------------- dataset


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
    # false: any undecodable or oversize image stops the run before training and lists the files;
    # true: such files are left out and their number is logged.
    skip_corrupt: bool = False
    # Images whose header declares more pixels are never decoded (a small PNG can declare
    # 20000x20000 and decode to GBs); they count as corrupt (see skip_corrupt).
    max_pixels: int = 50_000_000


def dataset_checks(cfg: DictConfig) -> list[Check]:
    ds = cfg.dataset
    own_fields = {"tfds": "name", "image_folder": "path"}
    fields = set(ds.keys())  # (`in` would skip a field whose value is still ??? / missing)
    checks = [("dataset.kind", ds.kind in own_fields and own_fields[ds.kind] in fields,
               "set by choosing the group option instead: dataset=rock_paper_scissors or dataset=image_folder")]
    if ds.kind == "tfds" and "name" in fields:
        checks.append(("dataset.name", bool(ds.name), "a TFDS dataset name such as rock_paper_scissors"))
    if ds.kind == "image_folder" and "path" in fields:
        checks.append(("dataset.path", not OmegaConf.is_missing(ds, "path") and bool(ds.path),
                       "a folder with one sub-directory of images per class, e.g. dataset.path=/data/hands"))
        checks.append(("dataset.max_pixels", ds.get("max_pixels", 1) >= 1,
                       "a pixel count >= 1 (width x height), e.g. dataset.max_pixels=50000000"))
    return checks


# --------------------------------------------------------------------------- split


@dataclass
class SplitConfig:
    """How examples are divided into train / validation / test.

    ``tutorial``: the dataset's train and test are pooled, shuffled once with ``seed``
    and cut into val / test / rest-for-train (the reference recipe, leak-free).
    ``official``: the dataset's own test set; validation is carved from its train set.
    Sizes below 1 are fractions of the pool they are taken from; sizes of 1 or more are counts.

    Grouped validation (official only): ``group_by`` holds out whole groups of similar training
    images instead of random ones, so validation shows hands training did not (``clusters``:
    k-means on features of each class's images into ``groups`` groups, validation taking whole
    groups of every class; ``group_features`` says which features: ``backbone``, the frozen
    backbone's; ``colour``, colour and shape statistics of the decoded images
    (rps.data.appearance: the hand's colour, how much of the image it fills, a grey thumbnail);
    ``mix``, both side by side, each centred and scaled to the same spread; ``pattern``: an image
    folder's file names, the first regex group of ``pattern`` naming the subject). ``folds=K``
    trains K models as the run's is trained (head, and fine-tuning when it fine-tunes), each
    validated on another 1/K of the groups, and a run is then judged by their mean validation
    accuracy (K times the training: cheap on cached features, minutes per fold when fine-tuning).

    ``refit=true``: the validation examples train too (the split is drawn as without it, so the
    test split is the same): a *refit* of a config already chosen on validation
    (``python -m rps.refit <run>``). Nothing can then be chosen or stopped on validation, so
    grouping, folds, early stopping, the plateau schedule and export formats (each measured on
    validation) are refused with it, and the run has no objective.
    """

    kind: str = "tutorial"
    val_size: float = 600
    test_size: Optional[float] = 400  # tutorial only; must be null for official
    group_by: str = "none"  # none | clusters | pattern
    groups: int = 5  # clusters: how many groups of similar frames each class is cut into
    group_features: str = "backbone"  # clusters: what is clustered: backbone | colour | mix
    pattern: Optional[str] = None  # pattern: regex over file names, e.g. '^(\w+?)\d*_' (group 1 = subject)
    folds: int = 1  # 1: one validation carve-out; K >= 2: group K-fold, judged by the fold mean
    refit: bool = False  # true: validation's examples train too; no validation, no objective (rps.refit)


def _regex_problem(pattern: str) -> Optional[str]:
    try:
        re.compile(pattern)
    except re.error as err:
        return f"not a valid regex ({err})"
    return None


def split_checks(cfg: DictConfig) -> list[Check]:
    sp = cfg.split
    checks = [_one_of("split.kind", sp.kind, SPLIT_KINDS), _size_check("split.val_size", sp.val_size)]
    if sp.refit:  # nothing may be chosen or stopped on a validation split that is not there
        needs = "the default while split.refit=true (a refit has no validation split to use it on)"
        checks += [("split.group_by", sp.group_by == "none", "none: " + needs),
                   ("split.folds", sp.folds == 1, "1: " + needs),
                   ("early_stopping.enabled", not cfg.early_stopping.enabled, "false: " + needs),
                   ("optimizer.schedule", cfg.optimizer.schedule != "plateau", "none or cosine: " + needs),
                   ("export.formats", not list(cfg.export.formats or []), "[]: each format is measured on validation; "
                                                                          "export them from the chosen run")]
    if sp.kind == "tutorial":
        checks.append(_size_check("split.test_size", sp.test_size))
    elif sp.kind == "official":
        checks.append(("split.test_size", sp.test_size is None, "null: the official split uses the dataset's own test set"))
    regex = _regex_problem(sp.pattern) if sp.pattern else None
    return checks + [
        ("split.group_by", sp.group_by in GROUPINGS and (sp.group_by == "none" or sp.kind == "official"),
         f"one of {', '.join(GROUPINGS)}; grouped validation needs split=official (the test split stays the dataset's)"),
        ("split.groups", sp.groups >= 2, "an integer >= 2"),
        _one_of("split.group_features", sp.group_features, GROUP_FEATURES),
        ("split.pattern", sp.group_by != "pattern" or (bool(sp.pattern) and regex is None
                                                       and cfg.dataset.kind == "image_folder"),
         f"a regex over file names whose first group is the subject (with dataset=image_folder){': ' + regex if regex else ''}"),
        ("split.folds", sp.folds >= 1 and (sp.folds == 1 or sp.kind == "official"),
         "an integer >= 1; folds (>= 2) need split=official (the test split stays the dataset's)"),
    ]


# --------------------------------------------------------------------------- backbone, head, optimizer


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
    # true: fine-tuning trains the backbone's top on cached activations of its frozen bottom
    # (rps.training.finetune_cache, stored in feature_cache.dir; the same model, faster epochs)
    # when the backbone can be split there (a MobileNet-V2); otherwise, or false, on images.
    fine_tune_cache: bool = True
    # Augmented runs: cached augmented views per training image (null: one per fine-tuning epoch,
    # so each epoch sees fresh augmentations, as on images; fewer: epochs cycle through them).
    fine_tune_views: Optional[int] = None


def backbone_checks(cfg: DictConfig) -> list[Check]:
    bb = cfg.backbone
    return [
        ("backbone.handle", bool(bb.handle), "a TF Hub URL or a local SavedModel directory"),
        ("backbone.image_size", 32 <= bb.image_size <= 1024, "an integer in [32, 1024] (224 for MobileNet-V2)"),
        _size_check("backbone.fine_tune_from", bb.fine_tune_from, "number of variables"),
        ("backbone.fine_tune_epochs", bb.fine_tune_epochs >= 1, "an integer >= 1"),
        ("backbone.fine_tune_views", bb.fine_tune_views is None or bb.fine_tune_views >= 1,
         "null (one augmented view per fine-tuning epoch) or an integer >= 1"),
    ]


@dataclass
class HeadConfig:
    """The trainable classifier on top of the backbone's feature vector."""

    dropout: float = 0.5
    hidden_units: int = 0  # 0: no hidden layer (Dropout -> Dense(softmax), the tutorial head)
    l2: float = 0.0  # L2 penalty on the head's Dense kernels (0: none)


def head_checks(cfg: DictConfig) -> list[Check]:
    head = cfg.head
    return [
        ("head.dropout", 0 <= head.dropout < 1, "a rate in [0, 1)"),
        ("head.hidden_units", head.hidden_units >= 0, "0 (no hidden layer) or a positive width"),
        ("head.l2", math.isfinite(head.l2) and head.l2 >= 0, "a penalty >= 0 (0: none)"),
    ]


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


def optimizer_checks(cfg: DictConfig) -> list[Check]:
    opt = cfg.optimizer
    return [
        _one_of("optimizer.name", opt.name, OPTIMIZERS),
        ("optimizer.lr", math.isfinite(opt.lr) and opt.lr > 0, "a finite learning rate > 0, e.g. 1e-3"),
        ("optimizer.momentum", 0 <= opt.momentum < 1, "a value in [0, 1)"),
        _one_of("optimizer.schedule", opt.schedule, SCHEDULES),
        ("optimizer.fine_tune_lr", math.isfinite(opt.fine_tune_lr) and opt.fine_tune_lr > 0,
         "a learning rate > 0, e.g. 1e-5"),
    ]


# --------------------------------------------------------------------------- augmentation


@dataclass
class AugmentConfig:
    """Random changes of the training images (``kind=basic``); never applied at evaluation.

    Only ``kind`` is logged while it is ``none``: the other fields then change nothing.
    """

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


def augment_checks(cfg: DictConfig) -> list[Check]:
    aug = cfg.augment
    checks = [_one_of("augment.kind", aug.kind, AUGMENTS)]
    checks += [(f"augment.{key}", 0 <= aug[key] < 1, "a fraction in [0, 1)")
               for key in ("rotation", "zoom", "contrast", "translation", "brightness", "saturation")]
    return checks + [
        ("augment.hue", 0 <= aug.hue <= 0.5, "a fraction of the colour circle in [0, 0.5]"),
        ("augment.head_phase", aug.head_phase or cfg.backbone.trainable,
         "true unless backbone.trainable=true (false augments only the fine-tuning phase)"),
    ]


# --------------------------------------------------------------------------- the rest of a run


@dataclass
class FeatureCacheConfig:
    """Backbone features computed once and reused (see rps/model/features.py).

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
    """The forms of the trained model a run logs, and the numbers measured on each.

    The SavedModel is always the run's MLflow model (unless ``model=false``). ``formats`` adds
    TFLite files (rps/model/formats.py): for each, and for the SavedModel, the run logs its size,
    the validation and test accuracy of that exact file and its latency per image (batch 1, median
    of ``latency_runs``) on the machine that ran it: metrics ``export/<format>/...`` and a table
    ``export/formats.md`` (and ``.csv``).
    """

    # false: no model is logged (metrics, plots and datasets are; with `formats`, their numbers
    # too, not their files): search trials, where the chosen trial is rerun to get its model
    model: bool = True
    formats: list[str] = field(default_factory=list)  # any of float32, float16, dynamic_range, int8
    latency_runs: int = 50  # timed single-image calls per format (after 5 untimed ones)
    representative_images: int = 100  # training images int8 calibrates its activation ranges on
    # true: the exported model (and its TFLite files) divides its logits by the temperature fitted
    # on validation (metric `temperature`): the same predicted classes, calibrated probabilities
    calibrate: bool = False
    # Replaced by `formats` (2026-12): kept only so that setting them explains the new knob.
    tflite: Optional[bool] = None
    tflite_quantize: Optional[bool] = None


def export_checks(cfg: DictConfig) -> list[Check]:
    ex = cfg.export
    formats = list(ex.formats)
    return [
        ("export.formats", set(formats) <= set(FORMATS) and len(set(formats)) == len(formats),
         f"a list of distinct formats among {', '.join(FORMATS)}, e.g. export.formats=[float32,int8]"),
        ("export.latency_runs", ex.latency_runs >= 1, "an integer >= 1"),
        ("export.representative_images", ex.representative_images >= 1, "an integer >= 1"),
        ("export.tflite", ex.tflite is None,
         "unset: replaced by export.formats (export.tflite=true is export.formats=[float32])"),
        ("export.tflite_quantize", ex.tflite_quantize is None,
         "unset: replaced by export.formats (export.tflite_quantize=true is export.formats=[float32,dynamic_range])"),
    ]


@dataclass
class ChampionConfig:
    """Register the chosen model and move an alias to it only when it beats the current holder.

    The chosen model is a single run's (not nested in a sweep or study), or a sweep's or study's
    best on validation. It takes ``<model_name>@<alias>`` when no version holds the alias, or when
    its validation objective (rps.training.outcome.OBJECTIVE) is higher than the holder's on the
    same split (same ``rps.data.split_digest``), or with ``force=true``. The new version's tags
    record the previous holder; every registered version gets a model card.
    """

    enabled: bool = False
    model_name: Optional[str] = None  # null: the experiment's name
    alias: str = "champion"
    force: bool = False  # move the alias even when the new model does not beat the holder


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
    champion: ChampionConfig = field(default_factory=ChampionConfig)
    # Register the logged model under this name in the MLflow Model Registry (null: don't).
    register_model: Optional[str] = None
    # Nest this run under that MLflow run (same experiment). A multirun sets it for every job to
    # its sweep's parent run, so it travels with the job to whatever machine runs it.
    parent_run_id: Optional[str] = None
    # Continue the run with this id from its last checkpoint (<mlruns_dir>/checkpoints/<id>/), with
    # the config it was started with: `python -m rps.run resume=<run id>`.
    resume: Optional[str] = None


def run_checks(cfg: DictConfig) -> list[Check]:
    return [
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "a value in [0, 1)"),
        ("early_stopping.patience", cfg.early_stopping.patience >= 1, "an integer >= 1"),
        ("epochs", cfg.epochs >= 1, "an integer >= 1"),
        ("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
        ("seed", cfg.seed >= 0, "an integer >= 0"),
        ("num_samples", cfg.num_samples >= 0, "an integer >= 0 (0 draws no sample grid)"),
        ("experiment_name", bool(cfg.experiment_name), "a non-empty MLflow experiment name"),
        ("register_model", not (cfg.register_model and not cfg.export.model),
         "null while export.model=false (no model is logged to register)"),
        ("feature_cache.batch_size", cfg.feature_cache.batch_size >= 1, "an integer >= 1"),
        _one_of("feature_cache.engine", cfg.feature_cache.engine, FEATURE_ENGINES),
        ("champion.alias", bool(re.fullmatch(r"[A-Za-z0-9_-]+", cfg.champion.alias or "")),
         "letters, digits, - and _ (an MLflow alias), e.g. champion"),
        ("champion.enabled", not (cfg.champion.enabled and not cfg.export.model),
         "false while export.model=false (no model is logged to register)"),
    ]


GROUP_CHECKS = (dataset_checks, split_checks, backbone_checks, head_checks, optimizer_checks, augment_checks,
                run_checks, export_checks)
GROUP_SCHEMAS = {"dataset_tfds": TfdsDatasetConfig, "dataset_image_folder": ImageFolderConfig, "split": SplitConfig,
                 "backbone": BackboneConfig, "head": HeadConfig, "optimizer": OptimizerConfig,
                 "augment": AugmentConfig}
