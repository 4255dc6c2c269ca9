"""rps: rock-paper-scissors transfer learning with TF Hub, Hydra and MLflow.

Importing the package sets the environment TensorFlow needs *before* it is first
imported anywhere: TF Hub's ``KerasLayer`` only works inside legacy Keras 2
(``tf-keras``) models, so ``TF_USE_LEGACY_KERAS=1`` is forced here and users never
have to set it themselves.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide CUDA-driver noise on CPU machines

__version__ = "0.1.0"
