"""Config composition and validation: fast, no TensorFlow."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from hydra.errors import ConfigCompositionException

from conftest import compose
from rps.config import validate
from rps.common.errors import ConfigError
from rps.data.splits import SplitSizes, split_sizes


def test_default_config_is_the_reference_recipe():
    cfg = compose()
    validate(cfg)
    assert cfg.dataset.name == "rock_paper_scissors"
    assert (cfg.split.kind, cfg.split.val_size, cfg.split.test_size) == ("tutorial", 600, 400)
    assert cfg.backbone.handle == "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
    assert (cfg.backbone.image_size, cfg.backbone.trainable) == (224, False)
    assert cfg.head.dropout == 0.5 and cfg.head.hidden_units == 0
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 0.001)
    assert (cfg.epochs, cfg.batch_size, cfg.num_samples) == (2, 64, 10)


@pytest.mark.parametrize(
    "overrides",
    [
        ["split=official"],
        ["optimizer=sgd", "optimizer.lr=0.05"],
        ["dataset=image_folder", "dataset.path=/data/hands"],
        ["head.hidden_units=128", "head.dropout=0"],
        ["augment=basic", "augment.rotation=0.2"],
        ["backbone.trainable=true", "backbone.fine_tune_from=20"],
        ["backbone.trainable=true", "augment=basic", "augment.head_phase=false", "feature_cache.enabled=true"],
    ],
)
def test_every_group_option_composes_and_validates(overrides):
    validate(compose(*overrides))


@pytest.mark.parametrize(
    "override, key",
    [
        ("head.dropout=-0.1", "head.dropout"),
        ("head.dropout=1.0", "head.dropout"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.001", "optimizer.lr"),
        ("optimizer.momentum=1.5", "optimizer.momentum"),
        ("epochs=0", "epochs"),
        ("batch_size=0", "batch_size"),
        ("num_samples=-1", "num_samples"),
        ("backbone.image_size=8", "backbone.image_size"),
        ("backbone.fine_tune_from=0", "backbone.fine_tune_from"),
        ("backbone.fine_tune_epochs=0", "backbone.fine_tune_epochs"),
        ("optimizer.fine_tune_lr=0", "optimizer.fine_tune_lr"),
        ("split.val_size=0", "split.val_size"),
        ("split.test_size=2.5", "split.test_size"),
        ("optimizer.name=rmsprop", "optimizer.name"),
        ("dataset.kind=csv", "dataset.kind"),
        ("head.l2=-0.1", "head.l2"),
        ("label_smoothing=1.0", "label_smoothing"),
        ("optimizer.schedule=step", "optimizer.schedule"),
        ("early_stopping.patience=0", "early_stopping.patience"),
        ("augment.head_phase=false", "augment.head_phase"),  # a frozen run has no other phase
    ],
)
def test_out_of_range_values_name_the_key_and_value(override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose(override))
    value = override.split("=", 1)[1]
    assert f"{key}=" in str(err.value)
    assert value.lower() in str(err.value).lower()
    assert "allowed" in str(err.value)


def test_switching_dataset_kind_by_hand_is_explained():
    for override in ("dataset.kind=image_folder", "dataset.kind=csv"):
        with pytest.raises(ConfigError, match="dataset=image_folder"):
            validate(compose(override))
    with pytest.raises(ConfigError, match="dataset.kind"):
        validate(compose("dataset=image_folder", "dataset.path=/x", "dataset.kind=tfds"))


def test_image_folder_needs_a_path():
    with pytest.raises(ConfigError, match="dataset.path"):
        validate(compose("dataset=image_folder"))


def test_wrong_types_and_unknown_keys_are_rejected_by_the_schema():
    with pytest.raises(ConfigCompositionException, match="epochs=two"):
        compose("epochs=two")
    cfg = compose()
    with pytest.raises(ValidationError, match="head.dropout"):
        cfg.head.dropout = "high"
    with pytest.raises(ConfigCompositionException, match="not_a_knob"):
        compose("head.not_a_knob=1")
    with pytest.raises(ConfigError, match=r"head.not_a_knob=1 \(allowed: no such key; head has dropout, "):
        validate(compose("+head.not_a_knob=1"))  # Hydra appends it: validate refuses it
    with pytest.raises(ConfigError, match="bogus=3"):
        validate(compose("+bogus=3"))


def test_group_options_list_only_real_options():
    """The schemas live in their own group, so they are not offered as options."""
    with pytest.raises(ConfigCompositionException) as err:
        compose("optimizer=rmsprop")
    options = str(err.value).split("Available options in 'optimizer':")[1].split("Config search path")[0].split()
    assert options == ["adam", "sgd"]
    with pytest.raises(ConfigCompositionException) as err:
        compose("dataset=csv")
    assert "schema" not in str(err.value).split("Config search path")[0]


def test_tutorial_split_sizes_and_fractions():
    tutorial = compose().split
    assert split_sizes(tutorial, 2520, 372) == SplitSizes(train=1892, val=600, test=400)
    fractions = OmegaConf.merge(tutorial, {"val_size": 0.25, "test_size": 0.25})
    assert split_sizes(fractions, 80, 20) == SplitSizes(train=50, val=25, test=25)


def test_official_split_uses_the_dataset_test_set():
    official = compose("split=official").split
    assert split_sizes(official, 2520, 372) == SplitSizes(train=2268, val=252, test=372)
    with pytest.raises(ConfigError, match="test set"):
        split_sizes(official, 100, 0)


def test_split_larger_than_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match="does not fit") as err:
        split_sizes(compose().split, 60, 24)
    assert "split.val_size=600" in str(err.value)


def test_named_experiments_compose():
    tutorial = compose("+experiment=tutorial")
    validate(tutorial)
    assert (tutorial.split.kind, tutorial.head.dropout, tutorial.optimizer.lr, tutorial.epochs, tutorial.batch_size) == \
        ("tutorial", 0.5, 0.001, 2, 64)
    assert tutorial.experiment_name == "tutorial"
    sweep = compose("+experiment=sweep_dropout_lr", return_hydra_config=True)
    assert dict(sweep.hydra.sweeper.params) == {"head.dropout": "0.2,0.5,0.8", "optimizer.lr": "1e-2,1e-3,1e-4"}
    assert str(sweep.hydra.mode) == "RunMode.MULTIRUN"
    best = compose("+experiment=official_best", return_hydra_config=True)
    validate(best)
    assert (best.split.kind, best.backbone.trainable, best.experiment_name) == ("official", True, "official_best")
    assert dict(best.hydra.sweeper.params) == {"seed": "1,2,3"}  # quoted as the mean of 3 seeds


def test_forcing_the_cache_on_an_augmented_head_phase_is_rejected():
    augmented_head = ["backbone.trainable=true", "augment=basic", "feature_cache.enabled=true"]
    with pytest.raises(ConfigError, match="feature_cache.enabled"):
        validate(compose(*augmented_head))  # augment.head_phase=true: phase 1 sees augmented images
    validate(compose(*augmented_head, "augment.head_phase=false"))  # phase 1 clean: the cache is valid


def test_dataset_max_pixels_must_be_a_positive_count():
    validate(compose("dataset=image_folder", "dataset.path=/data/hands", "dataset.max_pixels=1000"))
    with pytest.raises(ConfigError, match="dataset.max_pixels"):
        validate(compose("dataset=image_folder", "dataset.path=/data/hands", "dataset.max_pixels=0"))


@pytest.mark.parametrize("args, env, refused", [
    (["tracking_uri=http://alice:S3CRET@host:5000"], {}, "tracking URI given as tracking_uri=... carries credentials"),
    (["tracking_uri=http://S3CRET@host:5000"], {}, "carries credentials"),
    (["-m", "head.dropout=0.1,0.2", "++tracking_uri='https://a:S3CRET@h'"], {}, "carries credentials"),
    (["search.storage=postgresql+psycopg2://rps:S3CRET@db/optuna"], {}, "carries a password or token"),
    (["search.storage=postgresql://db/optuna?password=S3CRET"], {}, "carries a password or token"),
    (["+server.api_token=S3CRET"], {}, "names a secret"),
    (["+db.password=S3CRET"], {}, "names a secret"),
    (["epochs=1"], {"MLFLOW_TRACKING_URI": "http://alice:S3CRET@host"}, "MLFLOW_TRACKING_URI carries credentials"),
    # what docs/ show: a user name alone in a database URL (its password from PGPASSFILE), plain values
    (["search.storage=postgresql+psycopg2://rps_mlflow@db-host/optuna", "head.dropout=0.2"], {}, None),
    (["tracking_uri=http://127.0.0.1:5000", "run_name=tokens", "--cfg", "job"], {"MLFLOW_TRACKING_URI": "http://h"}, None),
])
def test_a_secret_on_the_command_line_is_found_and_never_repeated(args, env, refused):
    from rps.common.secrets import secret_in_command

    problem = secret_in_command(args, env)
    if refused is None:
        assert problem is None
    else:
        assert refused in problem and "Nothing was written" in problem and "S3CRET" not in problem
