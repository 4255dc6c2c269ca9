"""The last module the tests' fork server imports (``support.commands.PRELOAD``).

First what rps's commands import lazily, on first use, and would otherwise import again in every
forked command: TFDS's registry of dataset builders (``tfds.load`` imports every legacy builder
module), Optuna's importance evaluators (the study report's plots), MLflow's pyfunc loaders (a
logged model), GitPython (the run's git commit) and Hydra's plugins (its launchers and sweepers,
which every command's first Hydra call scans and imports: ~2.5% of a forked run's CPU, py-spy
2026-12-04). Of what they read from the environment while they import, only GitPython's
``GIT_PYTHON_*`` (which git to run) could differ in a command, and no test sets it; Optuna's
importance brings scikit-learn, which sets ``KMP_*`` in this server's environment, replaced in
every child. (MLflow's server modules read ``MLFLOW_AUTH_CONFIG_PATH``
while they import, which ``rps.server`` sets before it imports them: they stay out.)

Then ``gc.freeze()``: the ~580,000 objects of the preloaded libraries move to the permanent
generation, so the garbage collections of a forked command (its full ones take ~0.13 s over them,
and ``rps.training.loop.release_memory`` runs one before every run after a process's first) walk
only what the command made. Those objects live as long as the process anyway.
"""

import gc
import importlib

import tensorflow_datasets as tfds
from hydra.core.plugins import Plugins

for module in ("git", "mlflow.pyfunc", "optuna.importance", "optuna.visualization.matplotlib"):
    importlib.import_module(module)
tfds.builder_cls("rock_paper_scissors")  # imports the registry of builders, as tfds.load does
Plugins.instance()  # the scan of hydra_plugins: the children's Hydra finds it done

gc.collect()  # garbage from the imports is not frozen with them
gc.freeze()
