"""Search over runs: Hydra multirun sweeps as MLflow parent/child runs (sweep.py), Optuna studies
(study.py, config.py: the ``search`` group), their summaries (summary.py, study_report.py) and
the leaderboard (leaderboard.py). Imports the runner and everything below it."""
