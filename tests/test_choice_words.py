"""A sweep says what it chose and why, and how to train the chosen child again on its own."""

from __future__ import annotations

from omegaconf import OmegaConf

from conftest import compose
from rps.config.schema import Config
from rps.runner.rerun import default_config, rerun_overrides
from rps.search.summary import CHOSEN_BY, choice_lines, decided_by


def row(name, val, loss, epochs, test=0.5):
    return {"run_name": name, "status": "FINISHED", "selection_val_accuracy": val, "selection_val_loss": loss,
            "epochs_trained": epochs, "test_accuracy": test, "run_id": f"id-{name}"}


def test_the_words_name_the_step_of_the_rule_that_decided():
    assert decided_by(row("a", 0.9, 0.3, 5), row("b", 0.8, 0.1, 5)) == \
        "decided by selection_val_accuracy (0.9000 against 0.8000)"
    assert decided_by(row("a", 0.9, 0.2, 5), row("b", 0.9, 0.3, 5)) == \
        "tied on selection_val_accuracy; decided by selection_val_loss (0.2000 against 0.3000)"
    assert decided_by(row("a", 0.9, 0.2, 4), row("b", 0.9, 0.2, 5)) == \
        "tied on selection_val_accuracy and selection_val_loss; decided by epochs_trained (4 against 5)"
    assert decided_by(row("a", 0.9, 0.2, 4), row("b", 0.9, 0.2, 4)).endswith("decided by start order (it started first)")


def test_the_choice_names_chosen_runner_up_rule_model_and_rerun():
    table = [row("b", 0.8, 0.1, 5, test=1.0), row("a", 0.9, 0.3, 5, test=0.1), row("c", 0.85, 0.2, 5)]
    lines = choice_lines(table, table[1], "python -m rps.run head.dropout=0.2", "runs:/id-a")
    assert lines[0] == "Chosen: a (run id-a), selection_val_accuracy 0.9000"
    assert lines[1].startswith("Runner-up: c, selection_val_accuracy 0.8500: decided by selection_val_accuracy")
    assert lines[2].startswith(f"Rule: {CHOSEN_BY}; on validation only: the test split was not looked at")
    assert lines[3:] == ["Its model: runs:/id-a", "Rerun it alone, with its model: python -m rps.run head.dropout=0.2"]
    alone = choice_lines([table[1]], table[1], None, None)
    assert not any(line.startswith("Runner-up") for line in alone) and "none logged" in alone[-1]


def test_a_trials_rerun_command_composes_back_to_the_trials_config(tmp_path):
    """A study trial (its experiment declares a `search` block `python -m rps.run` cannot take)
    is rerun as a plain run with every value it changed: composing those overrides gives it back."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        tuned = hydra_compose(config_name="tune", overrides=[
            "+experiment=search_head", "head.dropout=0.3137", "optimizer.schedule=cosine", "parent_run_id=abc",
            f"mlruns_dir={tmp_path / 'a dir' / 'mlruns'}"])
    trial = OmegaConf.structured(Config)
    for key in tuned:
        if key != "search":
            trial[key] = tuned[key]
    overrides = rerun_overrides(trial, default_config())
    assert "export.model=true" in overrides and not any(o.startswith("parent_run_id") for o in overrides)
    again = compose(*overrides)
    expected = OmegaConf.to_container(trial, resolve=True) | {"parent_run_id": None, "export": {**trial.export, "model": True}}
    assert OmegaConf.to_container(again, resolve=True) == expected
