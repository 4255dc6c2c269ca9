"""Entry point: ``python -m rps.run [overrides]`` — compose the config, then delegate.

Examples::

    python -m rps.run epochs=2 batch_size=64
    python -m rps.run split=official head.dropout=0.2 optimizer=sgd optimizer.lr=0.01
    python -m rps.run -m head.dropout=0.2,0.5 optimizer.lr=1e-2,1e-3
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import rps  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rps import job
from rps.config import register_configs
from rps.errors import RpsError, Terminated

register_configs()


def _on_sigterm(signum, frame):
    raise Terminated(f"signal {signum}")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    signal.signal(signal.SIGTERM, _on_sigterm)
    hydra_dir = Path(HydraConfig.get().runtime.output_dir) / HydraConfig.get().output_subdir
    try:
        return job.run(cfg, hydra_dir)
    except RpsError as err:
        print(f"rps: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM via Terminated; the run is KILLED
        print(f"rps: interrupted ({err or 'Ctrl-C'}); the MLflow run was marked KILLED.", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)


if __name__ == "__main__":
    main()
