"""tests/support/services.py: a test whose service is missing skips locally and fails in CI, where
it waits for that service's file from .ci/run."""

from __future__ import annotations

import threading
import time

import pytest

from support import services
from support.services import require


def test_locally_a_missing_service_skips_the_test_with_its_reason(monkeypatch):
    monkeypatch.delenv("RPS_CI_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        require("chromium", lambda: "no Chromium (apt-get install -y chromium)")
    require("chromium", lambda: None)  # nothing missing: the test goes on


def test_in_ci_a_failed_or_still_missing_service_fails_the_test(monkeypatch, tmp_path):
    monkeypatch.setenv("RPS_CI_SERVICES", str(tmp_path))
    (tmp_path / "slurm").write_text("FAILED: E: Unable to locate package slurm-wlm\n")
    with pytest.raises(pytest.fail.Exception, match="Unable to locate package"):
        require("slurm", lambda: None)
    (tmp_path / "postgresql").write_text("ready after 3 s\n")
    with pytest.raises(pytest.fail.Exception, match="not running"):
        require("postgresql", lambda: "PostgreSQL is not running on 127.0.0.1:5432")
    require("postgresql", lambda: None)


def test_in_ci_a_test_waits_for_its_service_and_no_longer_than_the_limit(monkeypatch, tmp_path):
    monkeypatch.setenv("RPS_CI_SERVICES", str(tmp_path))
    threading.Timer(1.5, (tmp_path / "chromium").write_text, ["ready after 80 s\n"]).start()
    began = time.monotonic()
    require("chromium", lambda: None)
    assert time.monotonic() - began >= 1.4
    monkeypatch.setattr(services, "WAIT_S", 1)
    with pytest.raises(pytest.fail.Exception, match="not ready after 1 s"):
        require("slurm", lambda: None)
