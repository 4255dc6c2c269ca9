"""What it takes to rerun a run exactly, recorded with the run and compared by ``rps.reproduce``.

Besides its composed config (``config/config.yaml``, rps.tracking.record), each run logs

- ``environment/requirements.lock``: every installed distribution as ``name==version`` (a
  ``pip freeze``-style lock of the whole environment), its digest as the tag ``rps.env.lock_sha256``;
- the machine (tags ``rps.env.cpu``, ``rps.env.avx512``, ``rps.env.cores``): results are
  deterministic per machine, not across CPUs;
- the code: ``git_commit`` and ``git_dirty`` (rps.tracking.record) and, when the checkout has
  uncommitted changes to tracked files, their diff against the commit as
  ``environment/uncommitted.diff`` (tag ``rps.git.diff_sha256``; ``clean`` without changes).
  Untracked files never enter it, nor tracked files named like secrets (:data:`NEVER_DIFFED`);
- the backbone's digest (tag ``rps.backbone_digest``, every file of its SavedModel); the data's
  digests are tagged by the pipeline (``rps.data.<split>_digest``, ``rps.data.split_digest``).

"Same machine" means the same CPU model, AVX-512 support and core count, the same Python and the
same lock: then a rerun of the same code on the same data is expected to match bit for bit.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from rps.common import machine
from rps.training.report import Reporter
from rps.tracking.record import PROJECT_ROOT

LOCK_ARTIFACT = "environment/requirements.lock"
DIFF_ARTIFACT = "environment/uncommitted.diff"
LOCK_TAG, DIFF_TAG = "rps.env.lock_sha256", "rps.git.diff_sha256"
CPU_TAG, AVX512_TAG, CORES_TAG = "rps.env.cpu", "rps.env.avx512", "rps.env.cores"
BACKBONE_TAG = "rps.backbone_digest"
CLEAN = "clean"
MAX_DIFF_BYTES = 5 * 1024 * 1024  # a larger diff is digested, not logged (the tag rps.git.diff_note says so)
# Tracked files that may hold credentials: never copied into a run, whatever changed in them.
NEVER_DIFFED = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.netrc", ".pgpass", "*secret*",
                "*password*", "*credential*", "*token*")
_NAME = re.compile(r"[-_.]+")


# --------------------------------------------------------------------------- the package lock


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (``Tf_Keras`` -> ``tf-keras``)."""
    return _NAME.sub("-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every installed distribution -> its version (the first found on ``sys.path`` wins, as in imports)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in found:
            found[canonical(name)] = dist.version
    return dict(sorted(found.items()))


def lock_text(packages: dict[str, str]) -> str:
    header = (f"# Every distribution installed where this run ran (Python {platform.python_version()}), "
              "pip freeze style.\n# Recreate: python -m venv .venv && .venv/bin/pip install -r requirements.lock "
              "(rps itself: pip install -e . at the run's git_commit)\n")
    return header + "".join(f"{name}=={version}\n" for name, version in packages.items())


def parse_lock(text: str) -> dict[str, str]:
    """``name==version`` lines (comments and blank lines skipped) -> ``{name: version}``."""
    out = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.lstrip().startswith("#"):
            out[canonical(name)] = version
    return out


def lock_digest(packages: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())).encode()).hexdigest()


# --------------------------------------------------------------------------- the code


def _git(root: Path, *args: str, timeout: float = 30) -> Optional[bytes]:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path = PROJECT_ROOT) -> Optional[str]:
    out = _git(root, "rev-parse", "HEAD")
    return out.decode().strip() if out else None


def uncommitted_diff(root: Path = PROJECT_ROOT) -> Optional[str]:
    """The uncommitted changes to tracked files of the checkout at ``root`` (staged or not) as a
    patch against HEAD (``git apply`` takes it), "" when there are none, None outside git.
    Untracked files and :data:`NEVER_DIFFED` names are left out; no diff driver or text
    conversion the repository configures is run."""
    excluded = [f":(exclude,glob)**/{pattern}{inside}" for pattern in NEVER_DIFFED for inside in ("", "/**")]
    out = _git(root, "diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv", "--binary", "--", ".", *excluded)
    return None if out is None else out.decode("utf-8", errors="replace")


def diff_digest(diff: Optional[str]) -> Optional[str]:
    if diff is None:
        return None
    return hashlib.sha256(diff.encode()).hexdigest() if diff else CLEAN


# --------------------------------------------------------------------------- an environment, recorded or current


@dataclass
class Environment:
    """What a run's numbers depend on besides its config and data."""

    packages: dict[str, str] = field(default_factory=dict)  # empty: not recorded (runs before 2026-12)
    python: str = ""
    cpu: str = ""
    avx512: str = ""
    cores: str = ""
    commit: str = ""
    diff: str = ""  # the digest of the uncommitted diff, CLEAN, or "" when unknown

    def machine_keys(self) -> tuple:
        return self.cpu, self.avx512, self.cores, self.python, lock_digest(self.packages) if self.packages else ""


def current_environment(root: Path = PROJECT_ROOT) -> Environment:
    return Environment(installed_packages(), platform.python_version(), machine.cpu_model(),
                       "yes" if machine.has_avx512() else "no", str(machine.cores()), git_commit(root) or "",
                       diff_digest(uncommitted_diff(root)) or "")


def recorded_environment(tags: dict[str, str], lock: Optional[str]) -> Environment:
    """The environment a run recorded (its tags, and its lock artifact's text when it has one)."""
    return Environment(parse_lock(lock) if lock else {}, tags.get("version.python", ""), tags.get(CPU_TAG, ""),
                       tags.get(AVX512_TAG, ""), tags.get(CORES_TAG, ""), tags.get("git_commit", ""),
                       tags.get(DIFF_TAG, ""))


def differences(recorded: Environment, current: Environment) -> list[tuple[str, str, str]]:
    """(what, recorded, current) for everything that differs; values a run did not record say so."""
    out = []
    for what in ("cpu", "avx512", "cores", "python", "commit", "diff"):
        then, now = getattr(recorded, what), getattr(current, what)
        if then != now:
            out.append((what, then or "(not recorded)", now or "(unknown)"))
    if not recorded.packages:
        return out + [("packages", "(not recorded)", f"{len(current.packages)} installed")]
    for name in sorted(set(recorded.packages) | set(current.packages)):
        then, now = recorded.packages.get(name), current.packages.get(name)
        if then != now:
            out.append((f"package {name}", then or "(absent)", now or "(absent)"))
    return out


# --------------------------------------------------------------------------- logging it with a run


def log_provenance(report: Reporter, cfg: DictConfig, root: Path = PROJECT_ROOT) -> None:
    """The lock, the machine, the uncommitted diff (when there is one) and the backbone's digest."""
    from rps.model.features import backbone_digest
    from rps.model.hub import backbone_dir

    packages = installed_packages()
    report.text(lock_text(packages), LOCK_ARTIFACT)
    tags = {LOCK_TAG: lock_digest(packages), CPU_TAG: machine.cpu_model(),
            AVX512_TAG: "yes" if machine.has_avx512() else "no", CORES_TAG: str(machine.cores()),
            BACKBONE_TAG: backbone_digest(cfg.backbone.handle, backbone_dir(cfg.backbone.handle))}
    diff = uncommitted_diff(root)
    if diff is not None:
        tags[DIFF_TAG] = diff_digest(diff)
    if diff and len(diff.encode()) <= MAX_DIFF_BYTES:
        report.text(diff, DIFF_ARTIFACT)
    elif diff:
        tags["rps.git.diff_note"] = f"uncommitted diff of {len(diff.encode())} bytes not logged (over {MAX_DIFF_BYTES})"
    report.tags(tags)


def recorded_text(run_id: str, path: str, limit: int = MAX_DIFF_BYTES) -> Optional[str]:
    """The text artifact ``path`` of a run (at most ``limit`` bytes), or None when it has none."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="rps-recorded-") as tmp:
        try:
            local = Path(mlflow.MlflowClient().download_artifacts(run_id, path, tmp))
        except Exception:  # MLflow raises several types for an artifact that is not there
            return None
        if not local.is_file() or local.stat().st_size > limit:
            return None
        return local.read_text(errors="replace")
