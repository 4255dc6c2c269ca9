"""A sweep's job run again as a launcher runs it (what a SLURM requeue does): ``job.run`` on the
composed config and the job's overrides. ``python -m support.sweep_job <overrides>`` (tests/ importable)."""

import sys

from conftest import compose
from rps.runner import job

if __name__ == "__main__":
    overrides = sys.argv[1:]
    job.run(compose(*overrides), None, overrides)
