"""Hyper-parameter search with Optuna over the composed Hydra config, on validation only
(the study itself: rps.search.study).

    python -m rps.tune +experiment=search_head                        # the study the experiment declares
    python -m rps.tune +experiment=search_head search.trials=50 epochs=10
    python -m rps.tune +experiment=search_head search.storage=postgresql+psycopg2://...  # one of many workers
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import rps  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rps.common.files import private_files
from rps.common.quiet import quiet_tensorflow_startup
from rps.common.secrets import exit_if_secret
from rps.common.errors import RpsError, Terminated, interrupt_on_signals
from rps.search.config import register_tune_configs
from rps.search.study import Study

register_tune_configs()

# The checkout's conf/ (absolute: the `rps-run`/`rps-tune` entry points import this module from elsewhere).
CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONF, config_name="tune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    private_files()  # also where a launcher runs the job in a process of its own (Ray, SLURM)
    interrupt_on_signals()
    hc = HydraConfig.get()
    try:
        # every trial is composed as this command was (Hydra's own overrides, e.g. hydra.searchpath, too)
        overrides = list(hc.overrides.hydra) + list(hc.overrides.task)
        study = Study(cfg, overrides, Path(hc.runtime.output_dir) / hc.output_subdir)
        study.run()
    except RpsError as err:
        print(f"rps.tune: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        print(f"rps.tune: interrupted ({str(err) or 'Ctrl-C'}); finished trials are kept: run the same command "
              "again to resume the study.", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)


def cli() -> None:
    """The ``rps-tune`` command (also ``python -m rps.tune``)."""
    private_files()  # run folders, Hydra's records, the local store: this user's only
    exit_if_secret("rps.tune", sys.argv[1:], os.environ)  # before Hydra writes the command line down
    quiet_tensorflow_startup()
    main()


if __name__ == "__main__":
    cli()
