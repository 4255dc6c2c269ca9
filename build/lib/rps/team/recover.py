"""Log a run whose tracking server stopped answering, once the server is back.

    python -m rps.recover mlruns/unsent/<folder>
    python -m rps.recover mlruns/unsent/<folder> --tracking-uri http://mlflow.example.org

A run that loses its server keeps everything it produced in such a folder (``record.json``:
params, tags, per-epoch and final metrics; ``artifacts/``; ``model/saved_model``) and prints its
path. This command writes all of it as a new FINISHED run of the same experiment (nested under
the same parent run, if any), tagged ``rps.recovered_from=<the lost run's id>``, with the same
MLflow model, then deletes the folder. The lost run itself, left RUNNING on the server, is marked
FAILED by the next rps command that opens the experiment (its process is gone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rps.common.errors import ResourceError


def recover(folder: Path, tracking_uri: str | None = None, mlruns_dir: str = "mlruns") -> str:
    """Log the kept run in ``folder``; returns the new run's id."""
    from rps import tracking
    from rps.tracking.recovery import log_kept_run
    from rps.tracking.reporter import RECORD_FILE
    from rps.tracking.store import check_tracking_server

    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ResourceError(f"{folder} is not a folder kept by a run that lost its server (no readable {RECORD_FILE}): {err}") from err
    uri = tracking.use_store(tracking_uri, mlruns_dir)
    check_tracking_server(uri)
    run_id = log_kept_run(folder, record)
    shutil.rmtree(folder)
    return run_id
