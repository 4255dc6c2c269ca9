"""The runner: one Hydra job as one tracked MLflow run (job.py) and how runs are named
(names.py). Imports rps.config, rps.training and rps.tracking."""
