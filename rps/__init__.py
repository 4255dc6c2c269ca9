"""rps: rock-paper-scissors transfer learning with TF Hub, Hydra and MLflow.

Importing the package sets the environment TensorFlow needs *before* it is first
imported anywhere: TF Hub's ``KerasLayer`` only works inside legacy Keras 2
(``tf-keras``) models, so ``TF_USE_LEGACY_KERAS=1`` is forced here and users never
have to set it themselves.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# The level the user chose ("" when unset or set by rps in a parent process): 2 or 3 stays as
# quiet as rps's default; 0 or 1 asks for TensorFlow's own output (rps.common.quiet).
_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
USER_TF_LOG_LEVEL = "" if _LEVEL in ("", os.environ.get("RPS_TF_LOG_LEVEL")) else _LEVEL
if not USER_TF_LOG_LEVEL:  # hide TF's INFO and WARNING lines (rps.common.quiet filters what this cannot)
    _VERBOSE = os.environ.get("RPS_VERBOSE", "") not in ("", "0")  # a sweep job of `rps.run -v`
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ["RPS_TF_LOG_LEVEL"] = "0" if _VERBOSE else "2"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars in logs are noise
# A tracking server that stops answering costs ~15 s (refused) to ~95 s (hung) per request, not
# MLflow's default ~4 min (refused) to ~20 min (hung): then the run keeps its results locally.
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
