"""The README's two set-up commands stay true: CI runs the test command it shows."""

import subprocess

from conftest import ROOT


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_a_run_command_and_a_test_command():
    run, test = setup_commands()
    assert "pip install -e ." in run and "python -m rps.run epochs=2 batch_size=64" in run
    assert 'pip install -e ".[test]"' in test and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    script = (ROOT / ".ci" / "run").read_text()
    extract = next(line for line in script.splitlines() if line.startswith("test_command="))
    out = subprocess.run(["bash", "-c", f"{extract}; printf %s \"$test_command\""], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == setup_commands()[1]
    assert 'eval "$test_command"' in script
