"""An ensemble as a model (``python -m rps.ensemble <parent run id>``): a sweep's finished children
with a logged model (seeds of one recipe, say) averaged into one SavedModel, logged as a new run
that predicts and serves like any other, measured against its members (rps.training.ensemble).

Each member's model is downloaded and checked against its run's manifest before it is loaded.
The members must share the dataset and the test split (the official split's test set, or one
tutorial-split seed and sizes): the ensemble is tested on the same images each member was.
Its validation estimate is the members' mean objective, each on its own held-out examples (the
members' carve-outs differ, so no validation split is common to all).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from rps.common.errors import ResourceError
from rps.config.logged import logged_config
from rps.runner.reproduce import logged_run, pinned_dataset
from rps.tracking import provenance
from rps.tracking.reporter import MODEL_URI_TAG
from rps.training.outcome import OBJECTIVE

ENSEMBLE_OF_TAG, MEMBERS_TAG = "rps.ensemble_of", "rps.ensemble_members"
TABLE = "eval/ensemble.md"


@dataclass
class Plan:
    parent: Optional[object]  # the sweep whose children are the members (None: members named one by one)
    members: list  # the finished runs with a logged model, oldest first
    cfg: DictConfig  # the first member's logged config (data, split, image size)


def _get(run_id: str, uri: str):
    return logged_run(run_id, uri, "a sweep's parent run id (or the members' run ids)")


def plan(run_ids: list[str] | str, uri: str) -> Plan:
    """The members (one id: that sweep's finished children with a model; several: those runs),
    checked to share data and test split."""
    from rps import tracking

    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    if len(ids) == 1:
        parent = _get(ids[0], uri)
        members = [c for c in tracking.child_runs(ids[0])
                   if c.info.status == "FINISHED" and c.data.tags.get(MODEL_URI_TAG)]
        where = f"Run {ids[0]} has {len(members)} finished child run(s) with a logged model"
    else:
        parent, members = None, [_get(i, uri) for i in ids]
        unusable = [m.info.run_id for m in members if m.info.status != "FINISHED" or not m.data.tags.get(MODEL_URI_TAG)]
        if unusable:
            raise ResourceError(f"Run(s) {', '.join(unusable)} did not finish with a logged model: every run named "
                                "as a member must have one.")
        where = f"{len(members)} run(s) named"
    if len(members) < 2:
        raise ResourceError(f"{where}; an ensemble needs 2 or more finished runs with a model (a sweep over seeds "
                            "with export.model=true, e.g. +experiment=official_robust, or its refits).")
    tests = {(m.data.tags.get("dataset_version"), m.data.params.get("data.n_test"),
              m.data.tags.get("rps.data.test_digest") if m.data.params.get("split.kind") == "tutorial" else "official")
             for m in members}
    if len(tests) > 1:
        raise ResourceError("The members were tested on different images (a tutorial-split seed "
                            "sweep draws a test split per seed): an ensemble has no common test split. Sweep over "
                            "seeds with split=official, or over other values with one seed.")
    sizes = {m.data.params.get("backbone.image_size") for m in members}
    if len(sizes) > 1:
        raise ResourceError(f"The members take different image sizes ({', '.join(sorted(sizes))}).")
    text = provenance.recorded_text(members[0].info.run_id, "config/config.yaml")
    if text is None:
        raise ResourceError(f"Run {members[0].info.run_id} has no config/config.yaml: not an rps run.")
    return Plan(parent, members, pinned_dataset(logged_config(text), members[0]))


def _test_examples(cfg: DictConfig):
    from rps.training.ensemble import test_split
    from rps.training.pipeline import Prepared, load_examples
    from rps.training.preflight import preflight
    from rps.training.report import Reporter

    train_ex, test_ex, class_names = load_examples(Prepared(cfg, preflight(cfg), None, 0), Reporter())
    return test_split(cfg, train_ex, test_ex), class_names


GAP = 0.05  # a member scoring this much off its own run's test accuracy was not tested on these images


def _check_members(members: list, predictions: dict) -> None:
    """Each member's accuracy on the recomputed test split against the one its run logged: the same
    images give the same accuracy up to the numerics of the exported model (a few images at most)."""
    for member, probs in zip(members, predictions["plain"]):
        logged = member.data.metrics.get("test_accuracy")
        now = float((probs.argmax(axis=1) == predictions["labels"]).mean())
        if logged is not None and abs(now - logged) > GAP:
            raise ResourceError(f"Member {member.info.run_id} scores {now:.4f} on the test split recomputed here but "
                                f"logged {logged:.4f}: the data (or its model) is not what it was tested on. Check "
                                "TFDS_DATA_DIR / the dataset version, and that the members' runs were not changed.")


def build(the_plan: Plan, flip: bool, register_as: Optional[str], uri: str, mlruns_dir: str) -> tuple[str, str]:
    """Measure the variants, save the ensemble, log it as a new run; returns its run id and the
    variants' table."""
    import tensorflow as tf

    from rps import tracking
    from rps.tracking.models import local_model
    from rps.training import ensemble

    cfg, ids = the_plan.cfg, [m.info.run_id for m in the_plan.members]
    examples, class_names = _test_examples(cfg)
    if cfg.split.kind == "tutorial" and examples.digest() != the_plan.members[0].data.tags.get("rps.data.test_digest"):
        raise ResourceError("The test split recomputed from the members' config differs from the one they logged "
                            "(rps.data.test_digest): the data changed since they ran.")
    size = cfg.backbone.image_size
    with tempfile.TemporaryDirectory(prefix="rps-ensemble-") as tmp:
        dirs = []
        for i, member in enumerate(the_plan.members):
            folder = local_model(member.data.tags[MODEL_URI_TAG], uri, mlruns_dir, into=Path(tmp) / f"member{i}")
            dirs.append(str(folder / "artifacts" / "saved_model" if (folder / "MLmodel").is_file() else folder))
        variants, predictions = ensemble.measure(dirs, class_names, size, examples)
        _check_members(the_plan.members, predictions)
        saved = Path(tmp) / "saved_model"
        info = ensemble.save(dirs, class_names, size, flip, cfg.backbone.name, ids, saved)
        metrics, _ = ensemble.evaluate_saved(tf.saved_model.load(str(saved)), predictions, class_names, flip)
        objectives = [m.data.metrics[OBJECTIVE] for m in the_plan.members if OBJECTIVE in m.data.metrics]
        first = the_plan.parent or the_plan.members[0]
        of = the_plan.parent.info.run_name if the_plan.parent else ", ".join(m.info.run_name for m in the_plan.members)
        name = f"ensemble of {len(ids)}{' + flip' if flip else ''}: {of}"[:250]
        tags = {MEMBERS_TAG: ",".join(ids)[:5000]} | ({ENSEMBLE_OF_TAG: the_plan.parent.info.run_id} if the_plan.parent else {})
        with tracking.tracked_run(first.info.experiment_id, name, tags) as report:
            report.params({"ensemble.members": len(ids), "ensemble.flip": flip, "split.kind": cfg.split.kind,
                           "backbone.image_size": size, "data.n_test": len(examples)})
            if objectives:  # each member on its own held-out examples: an estimate, not the ensemble's
                report.metrics({"members_val_accuracy_mean": statistics.mean(objectives)})
            report.metrics(metrics)
            for v in variants:
                key = v.name.replace(" + ", "_").replace(" ", "_")
                report.metrics({f"ensemble/{key}/test_accuracy": v.test_accuracy,
                                f"ensemble/{key}/ms_per_image": v.ms_per_image})
            text = ensemble.table(variants)
            report.text(text, TABLE)
            report.model(saved, info, register_as)
            run_id = report.run_id
    return run_id, text
