"""Training, free of any tracking: the run's steps (pipeline.py), the training loop
(loop.py), validation carve-outs and folds (validation.py), evaluation (evaluate.py), what a run
promises its callers (outcome.py: the objective, how it stopped), the results sink interface
(report.py), and the plots and exported model a finished run leaves (plots.py, outputs.py).
Imports rps.common, rps.data and rps.model; never MLflow."""
