"""Entry point: ``python -m rps.run [overrides]`` — compose the config, then delegate.

Examples::

    python -m rps.run epochs=2 batch_size=64
    python -m rps.run split=official head.dropout=0.2 optimizer=sgd optimizer.lr=0.01
    python -m rps.run -m head.dropout=0.2,0.5 optimizer.lr=1e-2,1e-3
    python -m rps.run -m +experiment=sweep_dropout_lr
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import rps  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rps.runner import job
from rps.config import register_configs
from rps.common.errors import RpsError, Terminated, interrupt_on_signals, release_interrupted
from rps.common.quiet import quiet_tensorflow_startup

log = logging.getLogger(__name__)
register_configs()

# The checkout's conf/ (absolute: the `rps-run`/`rps-tune` entry points import this module from elsewhere).
CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run; returns its validation accuracy (a sweeper's objective: never the test split's)."""
    interrupt_on_signals()
    hc = HydraConfig.get()
    hydra_dir = Path(hc.runtime.output_dir) / hc.output_subdir
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        # the job's own overrides name a sweep job's run; its value goes back to the sweeper
        return job.run(cfg, hydra_dir, list(hc.overrides.task) if multirun else None, list(hc.overrides.task))
    except RpsError as err:
        print(f"rps: error: {err}", file=sys.stderr)
        if multirun:  # this job fails alone (its run says why); the sweep goes on
            return float("nan")
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM via Terminated; the run is KILLED
        release_interrupted(err)  # before a sweep's exit hook closes its parent run in the same store
        print(f"rps: interrupted ({str(err) or 'Ctrl-C'}); the MLflow run was marked KILLED.", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)
    except Exception:
        if not multirun:
            raise
        log.exception("Sweep job %s failed (its MLflow run is marked FAILED)", " ".join(hc.overrides.task))
        return float("nan")


def cli() -> None:
    """The ``rps-run`` command (also ``python -m rps.run``)."""
    quiet_tensorflow_startup()
    main()


if __name__ == "__main__":
    cli()
