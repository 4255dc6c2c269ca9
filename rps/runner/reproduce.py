"""Rerun a logged run and say whether its numbers came back (``python -m rps.reproduce <run id>``).

The run's logged config is composed again (rps.config.logged), its dataset version pinned to the
one it loaded, and run as a new run of the same experiment tagged ``rps.reproduces=<run id>``
(not nested, not registered). Before it starts, the environment it recorded
(rps.tracking.provenance) is compared with the current one; after it, the data and backbone
digests and the metrics.

Expected outcome: on the same machine (same CPU model, AVX-512 support and core count, same
Python and package lock) with the same code (commit and uncommitted diff), every metric bit for
bit; otherwise the accuracies (the objective, test accuracy, each exported format's) within a
tolerance. Timings and latencies are numbers of the machine and are never compared (nor is the
SavedModel's size, see :func:`not_compared`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from rps.common.errors import ResourceError
from rps.config.logged import logged_config
from rps.training.outcome import OBJECTIVE, Ending
from rps.tracking import provenance

REPRODUCES_TAG = "rps.reproduces"
VERDICT_TAG = "rps.reproduce.verdict"
DEFAULT_TOLERANCE = 0.01  # absolute, on accuracies in [0, 1]: 6 of 600 validation images
MATCH, MISMATCH, NOT_RERUN = 0, 1, 2  # the command's exit codes
# What must be the same for the rerun to be the same experiment (the feature cache's key too).
DIGEST_TAGS = ("rps.data.split_digest", "rps.data.train_digest", "rps.data.val_digest", "rps.data.test_digest",
               provenance.BACKBONE_TAG, "dataset_version", "feature_cache_key")
EXPECTATION = ("same machine (CPU model, AVX-512, cores, Python, package lock) and same code (commit, "
               "uncommitted diff)")


def not_compared(metric: str) -> bool:
    """Timings and latencies (numbers of the machine and its load), and the SavedModel's size: its
    graph names functions by the order the process traced them (a study's second trial saves
    longer names than a fresh process), so it varies by a few bytes with the same weights."""
    return (metric.startswith(("timing_", "timing/")) or metric.endswith(("latency_ms", "latency_p90_ms"))
            or metric == "export/saved_model/size_bytes")


def judged(metric: str) -> bool:
    """The accuracies compared within the tolerance on another machine."""
    return metric in (OBJECTIVE, "test_accuracy") or (metric.startswith("export/") and metric.endswith("_accuracy"))


@dataclass
class Plan:
    """What will be rerun, and how close its numbers are expected to come."""

    run: Any  # the original MLflow run
    cfg: DictConfig  # its config, ready to run
    differences: list[tuple[str, str, str]]  # (what, recorded, current)
    same_machine: bool
    same_code: bool

    @property
    def exact(self) -> bool:
        return self.same_machine and self.same_code


@dataclass
class Row:
    metric: str
    original: float
    rerun: Optional[float]
    ok: Optional[bool]  # None: shown, not judged

    @property
    def difference(self) -> Optional[float]:
        return None if self.rerun is None else abs(self.rerun - self.original)


@dataclass
class Verdict:
    code: int  # MATCH or MISMATCH
    summary: str
    rows: list[Row] = field(default_factory=list)
    digests: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, original, rerun) that differ


def plan(run_id: str, tracking_uri: str, mlruns_dir: str) -> Plan:
    """The original run, its config for the rerun, and the environment's differences."""
    run = logged_run(run_id, tracking_uri, "a run id")
    if run.info.status != "FINISHED":
        raise ResourceError(f"Run {run_id} ended {run.info.status}: it has no complete numbers to reproduce.")
    text = provenance.recorded_text(run_id, "config/config.yaml")
    if text is None:
        raise ResourceError(f"Run {run_id} has no config/config.yaml: it is not a single rps run "
                            "(a sweep's or study's parent? reproduce one of its children).")
    recorded = provenance.recorded_environment(run.data.tags, provenance.recorded_text(run_id, provenance.LOCK_ARTIFACT))
    current = provenance.current_environment()
    same_machine = bool(recorded.packages) and recorded.machine_keys() == current.machine_keys()
    same_code = bool(recorded.commit) and (recorded.commit, recorded.diff) == (current.commit, current.diff)
    cfg = rerun_config(run, logged_config(text), tracking_uri, mlruns_dir)
    return Plan(run, cfg, provenance.differences(recorded, current), same_machine, same_code)


def logged_run(run_id: str, uri: str, what: str):
    """The MLflow run ``run_id`` of the store at ``uri``; a :class:`ResourceError` naming the store
    and what to give instead (``what``, e.g. "a run id") when there is none."""
    import mlflow

    from rps import tracking

    try:
        return tracking.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise ResourceError(f"No run {run_id} in the tracking store {tracking.redact(uri)} ({err.error_code}). "
                            f"Give {what} from the MLflow UI or rps.compare, and --tracking-uri for a store "
                            "other than ./mlruns.") from err


def rerun_config(run, cfg: DictConfig, tracking_uri: str, mlruns_dir: str) -> DictConfig:
    """The logged config as a new, unnested, unregistered run of the same experiment and data version."""
    import mlflow

    cfg.experiment_name = mlflow.get_experiment(run.info.experiment_id).name
    cfg.tracking_uri, cfg.mlruns_dir = tracking_uri, str(Path(mlruns_dir).expanduser().resolve())
    cfg.parent_run_id, cfg.register_model, cfg.champion.enabled, cfg.resume = None, None, False, None
    cfg.run_name = f"reproduce {run.info.run_name}"[:250]
    return pinned_dataset(cfg, run)


def pinned_dataset(cfg: DictConfig, run) -> DictConfig:
    """``cfg`` with the TFDS version ``run`` loaded (null in a config means "the newest prepared")."""
    version = run.data.params.get("dataset.version")
    if cfg.dataset.kind == "tfds" and version and version != "None":
        cfg.dataset.version = version
    return cfg


def rerun(the_plan: Plan):
    """Run the plan's config as a new tracked run; returns it (rps.runner.job.Finished)."""
    from rps.runner import job

    finished = job.execute(the_plan.cfg, extra_tags={REPRODUCES_TAG: the_plan.run.info.run_id})
    if finished.ending is not Ending.FINISHED:
        raise ResourceError(f"The rerun {finished.run_id} ended {finished.ending.value}: nothing to compare.")
    return finished


def compare(original: dict[str, float], rerun_metrics: dict[str, float], exact: bool, tolerance: float) -> list[Row]:
    """Every metric the original logged (timings and latencies left out), judged exactly or within
    ``tolerance`` (the accuracies only)."""
    rows = []
    for name in sorted(original):
        if not_compared(name):
            continue
        then, now = original[name], rerun_metrics.get(name)
        if now is None:
            ok: Optional[bool] = False
        elif exact:
            ok = then == now or (math.isnan(then) and math.isnan(now))
        else:
            ok = abs(now - then) <= tolerance if judged(name) else None
        rows.append(Row(name, then, now, ok))
    return rows


def judge(the_plan: Plan, new_run, tolerance: float) -> Verdict:
    """Whether the rerun reproduced the run: same data and backbone, and its metrics as expected."""
    before, after = the_plan.run.data.tags, new_run.data.tags
    digests = [(tag, before[tag], after.get(tag, "(none)")) for tag in DIGEST_TAGS
               if tag in before and before[tag] != after.get(tag)]
    rows = compare(the_plan.run.data.metrics, new_run.data.metrics, the_plan.exact, tolerance)
    failed = [r.metric for r in rows if r.ok is False]
    if digests:
        return Verdict(MISMATCH, f"mismatch: the rerun used other data or another backbone ({', '.join(t for t, _, _ in digests)})",
                       rows, digests)
    if failed:
        how = "bit-exact" if the_plan.exact else f"within {tolerance}"
        return Verdict(MISMATCH, f"mismatch: {len(failed)} metric(s) not {how} ({', '.join(failed[:5])})", rows)
    if the_plan.exact:
        return Verdict(MATCH, f"bit-exact: all {len(rows)} metrics identical ({EXPECTATION})", rows)
    if all(r.difference == 0 for r in rows):
        return Verdict(MATCH, f"match: all {len(rows)} metrics identical, although bit-exactness was not expected "
                              "(another machine or code)", rows)
    judged_rows = [r for r in rows if r.ok]
    return Verdict(MATCH, f"match within {tolerance}: {len(judged_rows)} accuracies (another machine or code: "
                          "bit-exactness not expected)", rows)


def markdown(the_plan: Plan, verdict: Verdict) -> str:
    """The comparison as the new run's artifact ``reproduce/comparison.md`` (and the CLI's output)."""
    lines = [f"Reproduction of run {the_plan.run.info.run_id} ({the_plan.run.info.run_name})", "",
             f"**{verdict.summary}**", "", "Environment (recorded -> now):"]
    lines += [f"- {what}: {then} -> {now}" for what, then, now in the_plan.differences] or [
        "- no difference"]
    lines += [f"- digest {tag}: {then} -> {now}" for tag, then, now in verdict.digests]
    lines += ["", "| metric | original | rerun | difference | judged |", "|---|---|---|---|---|"]
    for r in verdict.rows:
        mark = {True: "ok", False: "DIFFERS", None: "shown"}[r.ok]
        lines.append(f"| {r.metric} | {r.original:.10g} | {'-' if r.rerun is None else f'{r.rerun:.10g}'} | "
                     f"{'-' if r.difference is None else f'{r.difference:.3g}'} | {mark} |")
    return "\n".join(lines) + "\n"


def record_verdict(new_run_id: str, verdict: Verdict, text: str) -> None:
    from rps import tracking

    report = tracking.MlflowReporter(new_run_id)
    report.tags({VERDICT_TAG: verdict.summary[:5000]})
    report.text(text, "reproduce/comparison.md")
