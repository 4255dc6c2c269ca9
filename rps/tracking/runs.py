"""Run lifecycle: every run ends FINISHED, FAILED or KILLED, and runs whose process died are found.

A run rps starts (single runs, sweep jobs, sweep parents) carries tags naming the process that
owns it (``rps.host``, ``rps.boot_id``, ``rps.pid``, ``rps.process_start``) and a heartbeat tag
(``rps.heartbeat``, Unix seconds) that a background thread renews every minute while the process
lives. Every rps command that opens an experiment (``rps.run``, a sweep, ``rps.compare``) marks
the experiment's RUNNING runs whose owner is gone as FAILED, with ``rps.reaped`` and ``error``
saying why (:func:`reap_stale_runs`):

- owner on this machine (same host name and boot id): reaped as soon as its process is gone
  (its pid no longer exists, or belongs to a newer process) or the machine has rebooted;
- owner on another machine: reaped only when its heartbeat is older than 15 minutes (15 missed
  beats); a live rps process beats every minute whatever its main thread is doing.

Runs without these tags (started by other tools or older rps versions) are never touched.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import mlflow
from mlflow.entities import Param, RunStatus, RunTag
from omegaconf import DictConfig

from rps.common.errors import ResourceError, release_interrupted
from rps.tracking.access import access_error
from rps.tracking.record import config_params, environment_tags
from rps.tracking.reporter import MlflowReporter
from rps.training.outcome import Ending, StopSignal

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # nests a run under another in the UI
HOST, BOOT_ID, PID, PROCESS_START = "rps.host", "rps.boot_id", "rps.pid", "rps.process_start"
HEARTBEAT, REAPED = "rps.heartbeat", "rps.reaped"
RUN_COLOR = "mlflow.runColor"  # the colour the UI draws a run in (hex), as its colour picker sets it
PARENT_COLOR = "#000000"  # a sweep's or study's parent: black, which the UI never picks for a run
# Children, by job or trial number: MLflow's own palette without its greys, neighbours far apart in hue.
CHILD_COLORS = ("#2272b4", "#c83243", "#308613", "#de7921", "#8a63bf", "#04867d", "#b45091", "#a6630c",
                "#137dae", "#9e102c", "#3ba65e", "#434a93", "#facb66", "#e65b77", "#115026", "#be501e",
                "#4299e0", "#93320b", "#277c43", "#0e538b")
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 15 * 60.0


# --------------------------------------------------------------------------- who owns a run


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot), "" if unknowable, None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the name
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:  # no /proc (not Linux): existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return ""


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run, with a first heartbeat."""
    pid = os.getpid()
    return {HOST: socket.gethostname(), BOOT_ID: _boot_id(), PID: str(pid),
            PROCESS_START: _process_start(pid) or "", HEARTBEAT: str(int(time.time()))}


def owner_gone(tags: dict[str, str], now: Optional[float] = None) -> Optional[str]:
    """Why the process owning a run with these tags is gone, or None if it may be alive."""
    host, pid = tags.get(HOST, "?"), tags.get(PID, "?")
    if tags.get(HOST) == socket.gethostname() and tags.get(BOOT_ID) and tags.get(BOOT_ID) == _boot_id():
        started = _process_start(int(pid))
        if started is None:
            return f"its process {pid} on {host} is gone"
        if started and tags.get(PROCESS_START) and started != tags[PROCESS_START]:
            return f"its process {pid} on {host} is gone (the pid now belongs to another process)"
        return None
    if tags.get(HOST) == socket.gethostname() and tags.get(BOOT_ID) and _boot_id():
        return f"{host} has restarted since the run began"
    age = (now or time.time()) - float(tags.get(HEARTBEAT) or 0)
    if age > STALE_AFTER_SECONDS:
        return (f"no heartbeat from its process {pid} on {host} for {age / 60:.0f} min "
                f"(a live rps process beats every {HEARTBEAT_SECONDS:.0f} s)")
    return None


def reap_stale_runs(experiment_ids: list[str], client: Optional[mlflow.MlflowClient] = None) -> list[str]:
    """Mark RUNNING rps runs of these experiments whose process is gone as FAILED; returns their ids."""
    client = client or mlflow.MlflowClient()
    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000)
    reaped = []
    for run in running:
        tags = run.data.tags
        why = owner_gone(tags) if PID in tags else None
        if why and _mark_failed(client, run, why):
            reaped.append(run.info.run_id)
    return reaped


def _mark_failed(client: mlflow.MlflowClient, run, why: str) -> bool:
    """Mark one dead run FAILED; False if the server refuses because it is another user's run
    (a team server lets only a run's owner change it: that user's next command reaps it)."""
    message = f"left RUNNING by a process that died: {why}; marked FAILED by rps"
    try:
        client.set_tag(run.info.run_id, REAPED, why)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "PERMISSION_DENIED":
            raise
        log.debug("Run %s is %s's; only its owner may mark it FAILED", run.info.run_id, run.info.user_id)
        return False
    client.set_tag(run.info.run_id, "error", message)
    client.set_terminated(run.info.run_id, "FAILED")
    log.warning("Run %s (%s) %s", run.info.run_id, run.info.run_name, message)
    return True


class Heartbeat:
    """Renews a run's ``rps.heartbeat`` tag every ``interval`` seconds from a daemon thread."""

    def __init__(self, run_id: str, interval: float = HEARTBEAT_SECONDS):
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"rps-heartbeat-{run_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        client = mlflow.MlflowClient()
        while not self._stop.wait(self.interval):
            try:
                client.set_tag(self.run_id, HEARTBEAT, str(int(time.time())))
            except Exception as err:  # a busy or unreachable store: the next beat tries again
                log.debug("heartbeat of run %s failed: %s", self.run_id, err)


# --------------------------------------------------------------------------- start and end


@contextmanager
def tracked_run(experiment_id: str, run_name: str, tags: dict[str, str], staging: Optional[Path] = None,
                about: Optional[dict] = None, stop: Optional[StopSignal] = None,
                resume: Optional[str] = None) -> Iterator[MlflowReporter]:
    """An MLflow run, written through the :class:`MlflowReporter` it yields, that ends FINISHED,
    FAILED (exception) or KILLED (Ctrl-C / SIGTERM). ``resume``: the id of an earlier run to
    continue (reopened RUNNING, owned by this process; the marks of its death removed).

    If the tracking server stops answering meanwhile, the run's record (``about`` it, and what it
    reported) is kept in ``staging`` and :class:`TrackingLost` says where; otherwise ``staging``
    (a local copy of the artifacts) is removed at the end.
    """
    try:
        run = _reopen(resume, tags) if resume else mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                                                    tags=tags | owner_tags())
    except Exception as err:  # e.g. a user who may read the experiment but not write to it
        denied = access_error(err, mlflow.get_tracking_uri(), (about or {}).get("experiment_name", experiment_id))
        if denied:
            raise denied from None
        raise
    report = MlflowReporter(run.info.run_id, staging, stop, training=True)
    about = (about or {}) | {"run_name": run_name, "start_tags": tags}
    status = RunStatus.FAILED
    try:
        with Heartbeat(run.info.run_id):
            yield report
        if report.offline:
            raise TrackingLost(report.keep(about), report.offline)
        status = RunStatus.from_string(Ending.of(report.stop()).status)
    except KeyboardInterrupt as err:
        release_interrupted(err)  # a store write it cut short must not keep the store locked
        status = RunStatus.KILLED
        raise
    except SystemExit:  # a launcher ending the process (submitit after a preemption): resumable, not done
        status = RunStatus.KILLED
        raise
    except Exception as err:
        if report.offline is None:
            message = f"{type(err).__name__}: {err}"[:4000]
            _quietly("record the error", lambda: mlflow.set_tag("error", message))
        elif not isinstance(err, TrackingLost):
            report.keep(about)
        raise
    finally:
        if report.offline is None:
            _quietly("log the run's last metrics", report.finish)
            report.discard()
        else:  # the server is gone: one quick attempt to close the run, not MLflow's retry budget
            os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
        _close(run.info.run_id, RunStatus.to_string(status), tries=1 if report.offline else 3)


RESUMED = "rps.resumed"  # how many times the run was resumed


def _reopen(run_id: str, tags: dict[str, str]):
    """Continue the run ``run_id``: RUNNING again, this process's owner tags, no error left from the
    process that died (a reaper may have marked it FAILED meanwhile)."""
    client = mlflow.MlflowClient()
    previous = client.get_run(run_id)
    run = mlflow.start_run(run_id=run_id)
    for stale in ("error", REAPED):
        if stale in previous.data.tags:
            client.delete_tag(run_id, stale)
    count = int(previous.data.tags.get(RESUMED, "0")) + 1
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in (tags | owner_tags() | {RESUMED: count}).items()])
    return run


def tagged_runs(experiment_id: str, tag: str, value: str) -> list:
    """Runs of the experiment tagged ``tag=value``, newest first."""
    return mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{value}'", order_by=["attributes.start_time DESC"],
        max_results=100)


def logged_epochs(run_id: str, key: str = "val_accuracy") -> int:
    """The last epoch (step) of ``key`` a run has logged (0: none)."""
    return max((m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)), default=0)


def phase_epochs(run_id: str, best: bool) -> dict[int, int]:
    """Epochs of each training phase a run kept: all it trained, or (``best``: early stopping
    restored the best weights) up to its first best validation accuracy within the phase."""
    client = mlflow.MlflowClient()
    phase = {m.step: int(m.value) for m in client.get_metric_history(run_id, "phase")}
    accuracy = {m.step: m.value for m in client.get_metric_history(run_id, "val_accuracy")}
    kept: dict[int, int] = {}
    for p in sorted(set(phase.values()) or {1}):
        steps = sorted(s for s in accuracy if phase.get(s, 1) == p)
        if best and steps:
            top = max(accuracy[s] for s in steps)
            kept[p] = next(i for i, s in enumerate(steps, start=1) if accuracy[s] == top)
        else:
            kept[p] = len(steps)
    return kept


def _close(run_id: str, status: str, tries: int) -> None:
    """End the active run with ``status``. A store another process keeps busy gets a few more
    tries; if all fail, the run stays RUNNING until the next rps command reaps it (its process is
    gone)."""
    try:
        mlflow.end_run(status)  # pops the active run first, whatever happens next
        return
    except Exception as err:
        problem = err
    for attempt in range(1, tries):
        time.sleep(0.5 * attempt)
        try:
            mlflow.MlflowClient().set_terminated(run_id, status)
            return
        except Exception as err:
            problem = err
    log.warning("Could not close the run %s as %s in the tracking store: %s", run_id, status,
                str(problem).splitlines()[0] if str(problem) else problem)


def _quietly(what: str, call) -> None:
    try:
        call()
    except Exception as err:  # the run's own outcome matters more than this bookkeeping
        log.warning("Could not %s in the tracking store: %s", what, str(err).splitlines()[0] if str(err) else err)


class TrackingLost(ResourceError):
    """The tracking server stopped answering during a run; what the run produced is kept locally."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(
            f"The run could not be tracked to the end: {reason}. Training stopped after the epoch in "
            f"progress; its params, metrics, plots and trained model are kept in {folder}. When the "
            f"tracking server is back, log them with: python -m rps.recover {folder}"
        )
        self.folder = folder


def record_failed_run(experiment_id: str, cfg: DictConfig, name: str, parent_run_id: str, err: Exception,
                      tags: Optional[dict[str, str]] = None) -> None:
    """A FAILED run for a sweep job that could not start (bad value, missing resource)."""
    client = mlflow.MlflowClient()
    tags = environment_tags() | owner_tags() | (tags or {}) | {PARENT_TAG: parent_run_id, "error": str(err)[:4000]}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config_params(cfg).items()])
    client.set_terminated(run.info.run_id, "FAILED")


def child_color(number: int) -> str:
    """The colour of a sweep's job or a study's trial ``number``: distinct from its neighbours' and the parent's."""
    return CHILD_COLORS[number % len(CHILD_COLORS)]


def open_parent_run(experiment_id: str, name: str, tags: dict[str, str], params: dict[str, str],
                    owned: bool = True) -> str:
    """A RUNNING parent run (a sweep's), owned by this process; returns its id.

    It carries what MLflow gives a run it starts itself (user, source, git commit: the UI's
    "Created by" and "Source") and its own colour. ``owned=False``: no process owns it (a search
    study's parent, which workers on several machines share and close when the study
    completes), so it is never reaped.
    """
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.MlflowClient()
    tags = resolve_tags(environment_tags() | {RUN_COLOR: PARENT_COLOR} | tags | (owner_tags() if owned else {}))
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def shared_parent_run(experiment_id: str, key_tag: str, key: str, name: str, tags: dict[str, str],
                      params: dict[str, str]) -> str:
    """The one parent run tagged ``key_tag=key`` (an Optuna study's, shared by all its workers):
    found, else created (racing workers converge on the oldest and delete their own); marked
    RUNNING while a worker runs. Returns its id."""
    client = mlflow.MlflowClient()

    def existing() -> list:
        return client.search_runs([experiment_id], filter_string=f"tags.`{key_tag}` = '{key}'",
                                  order_by=["attributes.start_time ASC"], max_results=100)

    found = existing()
    if not found:
        mine = open_parent_run(experiment_id, name, tags | {key_tag: key}, params, owned=False)
        found = existing()
        if found[0].info.run_id != mine:  # another worker created one first
            client.delete_run(mine)
    parent = found[0].info.run_id
    client.update_run(parent, status="RUNNING")
    return parent


def end_run(run_id: str, status: str) -> None:
    mlflow.MlflowClient().set_terminated(run_id, status)


def get_run(run_id: str):
    return mlflow.MlflowClient().get_run(run_id)


def child_runs(parent_id: str, client: Optional[mlflow.MlflowClient] = None) -> list:
    """The runs nested under ``parent_id``, oldest first."""
    client = client or mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=10000,
    )
