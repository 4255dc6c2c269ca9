"""The README and docs/ stay true: CI runs the README's test command, and the docs cannot rot.

The README is a short front door (size cap); every relative link in it and in docs/ reaches a
file; every ``python -m rps.<module>`` they name is a module that exists; mkdocs.yml's nav lists
every page. All checks read files only: no subprocess training, so they run in a second.
"""

import re
import subprocess
from pathlib import Path

import yaml

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12_000
# Pages written on another branch (issue 22) that the docs already link to.
WRITTEN_ELSEWHERE = {DOCS / "deployment.md"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python -m ((?:rps|benchmarks)(?:\.\w+)+)")


def setup_commands() -> list[str]:
    text = README.read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text outside code: brackets in fenced blocks and code spans are not links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def broken_links(page: Path) -> list[str]:
    """Relative links of a markdown page whose target file does not exist (anchors not checked)."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path):  # an anchor on the page, or a URL
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.exists() and resolved not in WRITTEN_ELSEWHERE:
            broken.append(target)
    return broken


def missing_modules(text: str, root: Path = ROOT) -> list[str]:
    """``python -m rps.x.y`` (or ``benchmarks.x``) commands in text whose module is neither
    rps/x/y.py nor a package."""
    missing = []
    for module in sorted(set(MODULE.findall(text))):
        path = root.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
            missing.append(module)
    return missing


def test_readme_starts_with_a_run_command_and_a_test_command():
    run, test = setup_commands()
    assert "uv pip install --compile-bytecode -e ." in run and "python -m rps.run epochs=2 batch_size=64" in run
    assert 'uv pip install --compile-bytecode -e ".[test]"' in test and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    script = (ROOT / ".ci" / "run").read_text()
    extract = next(line for line in script.splitlines() if line.startswith("test_command="))
    out = subprocess.run(["bash", "-c", f"{extract}; printf %s \"$test_command\""], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == setup_commands()[1]
    assert 'eval "$test_command"' in script


def test_readme_is_a_short_front_door():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to a page in docs/"


def test_every_relative_link_reaches_a_file():
    broken = {page.relative_to(ROOT).as_posix(): broken_links(page) for page in pages()}
    assert not {page: links for page, links in broken.items() if links}


def test_every_rps_module_the_docs_run_exists():
    named = {page.relative_to(ROOT).as_posix(): missing_modules(page.read_text()) for page in pages()}
    assert not {page: modules for page, modules in named.items() if modules}


def test_the_site_nav_lists_every_page():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {DOCS / file for entry in nav for file in entry.values()}
    assert listed == set(DOCS.glob("*.md")) | WRITTEN_ELSEWHERE


def test_the_checks_catch_rot(tmp_path):
    """A broken link and a vanished module are reported; code, URLs and anchors are not links."""
    (tmp_path / "rps").mkdir()
    (tmp_path / "rps" / "run.py").write_text("")
    (tmp_path / "there.md").write_text("")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a) [web](https://x.org/y.md) [top](#top) `[no](code.md)`\n"
                    "[gone](gone.md)\n```\n[no](fenced.md)\n```\n")
    assert broken_links(page) == ["gone.md"]
    text = ("python -m rps.run x=1\n`python -m rps.bench` and python -m rps.team.server start; "
            "python -m benchmarks.speed")
    assert missing_modules(text, tmp_path) == ["benchmarks.speed", "rps.bench", "rps.team.server"]
