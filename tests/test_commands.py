"""The tests' way of starting commands (tests/support/commands.py): a warm command starts from
the fork server with every preloaded library imported and frozen out of garbage collection.
(That a warm command is the real command: test_e2e's warm run repeats a cold one's numbers.)"""

import json

from support.commands import PRELOAD, run_module

PROBE = """import gc, json, sys
print(json.dumps({"frozen": gc.get_freeze_count(), "imported": [m for m in %r if m in sys.modules]}))
"""


def test_a_warm_command_starts_with_the_preloaded_libraries_imported_and_frozen(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE % (PRELOAD,))
    result = run_module("probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout)
    assert seen["imported"] == PRELOAD, "the fork server skips a preload that fails to import: see which"
    assert seen["frozen"] > 100_000, "support.warm_server freezes the libraries' objects"

