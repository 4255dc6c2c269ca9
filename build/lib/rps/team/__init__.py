"""A team's deployment: the tracking server on PostgreSQL with sign-in and rps's guards, and the
recovery of runs that lost their server (recover.py). Imports rps.tracking and below.

- :mod:`rps.team.server`: the ``python -m rps.server`` command (start, stop, status, destroy,
  add-user, grant).
- :mod:`rps.team.processes`: which processes are the server's and what holds its port (/proc).
- :mod:`rps.team.accounts`: users, passwords, grants.
- :mod:`rps.team.auth_app`: the ``rps-auth`` MLflow app (``mlflow server --app-name rps-auth``):
  MLflow's basic-auth app plus :mod:`~rps.team.signin`, :mod:`~rps.team.ownership`,
  :mod:`~rps.team.artifact_paths` and :mod:`~rps.team.guard`.

docs/deployment.md says what the server guarantees, what it does not, and which upstream MLflow
behaviour each guard answers.
"""
