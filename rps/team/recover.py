"""Log a run whose tracking server stopped answering, once the server is back.

    python -m rps.recover mlruns/unsent/<folder>
    python -m rps.recover mlruns/unsent/<folder> --tracking-uri http://mlflow.example.org

A run that loses its server keeps everything it produced in such a folder (``record.json``:
params, tags, per-epoch and final metrics, the SHA-256 of each file of its model;
``artifacts/``; ``model/saved_model``). This command checks the kept model's files, then writes
all of it as a new FINISHED run of the same experiment (nested under the same parent run, if
any), tagged ``rps.recovered_from=<the lost run's id>`` and with how many epochs it trained
(``rps.epochs_done``, ``rps.epochs_asked``, ``rps.partial``), with the same MLflow model, then
deletes the folder. If the server stops answering meanwhile, the folder stays and running the
command again replaces the half-written run (no duplicate). The lost run itself, left RUNNING on
the server, is marked FAILED by the next rps command that opens the experiment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rps.common.errors import ResourceError


def _server_gone(uri: str, folder: Path, err: BaseException) -> ResourceError:
    """The one message for a server that is down at start and one that dies mid-upload."""
    from rps.tracking import redact

    cause = err.__cause__ if isinstance(err, ResourceError) and err.__cause__ else err
    return ResourceError(
        f"The MLflow tracking server {redact(uri)} does not answer ({type(cause).__name__}). Nothing is lost: "
        f"{folder} is kept as it was. When the server is back, run the same command again "
        f"(python -m rps.recover {folder}); a run this attempt left half-written is replaced, not duplicated."
    )


def _read(folder: Path) -> dict:
    from rps.tracking.reporter import RECORD_FILE

    try:
        return json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ResourceError(f"{folder} is not a folder kept by a run that lost its server (no readable {RECORD_FILE}): {err}") from err


def recover(folder: Path, tracking_uri: str | None = None, mlruns_dir: str = "mlruns") -> str:
    """Log the kept run in ``folder``; returns the new run's id."""
    from rps import tracking
    from rps.tracking.recovery import check_kept_model, log_kept_run
    from rps.tracking.reporter import unreachable
    from rps.tracking.store import check_tracking_server

    record = _read(folder)
    check_kept_model(folder, record)
    uri = tracking.use_store(tracking_uri, mlruns_dir)
    try:
        check_tracking_server(uri)
    except ResourceError as err:
        raise _server_gone(uri, folder, err) from None
    try:
        run_id = log_kept_run(folder, record)
    except Exception as err:
        if unreachable(err):
            raise _server_gone(uri, folder, err) from None
        raise
    shutil.rmtree(folder)
    return run_id
