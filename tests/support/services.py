"""The services some tests need (PostgreSQL, SLURM, a headless browser), and what such a test does
when its service is missing.

Locally, a missing service skips its tests, with the command that provides it. In CI, `.ci/run`
starts and installs the services while the project installs and the first tests run, one file per
service in the folder named by ``RPS_CI_SERVICES`` ("ready after N s", or "FAILED: ..." with the
end of its log). A test that needs a service waits for that service only (PostgreSQL is up within
seconds; the browser and SLURM come after their packages install), and fails if the service
failed or is still missing: in CI a skip would hide lost coverage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

WAIT_S = 900  # longer than any install of the services measured here (apt-get: 1-2 min)


def require(service: str, problem: Callable[[], Optional[str]]) -> None:
    """Skip (locally) or fail (in CI) the calling test if ``service`` cannot be used: ``problem()``
    says why, or returns None."""
    folder = os.environ.get("RPS_CI_SERVICES")
    if folder:
        _wait(Path(folder) / service)
    reason = problem()
    if reason and folder:
        pytest.fail(f"CI started {service}, but: {reason}")
    if reason:
        pytest.skip(reason)


def _wait(marker: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"CI service {marker.name} not ready after {WAIT_S} s (see {marker}.log)")
        time.sleep(1)
    status = marker.read_text().strip()
    if not status.startswith("ready"):
        pytest.fail(f"CI service {marker.name} failed: {status}")
