"""examples/trigger-dev installs from its lockfile and typechecks against the real Trigger.dev v4 and stripe types."""

import subprocess
from pathlib import Path

from .test_node_sdk import _tool, npm_ci

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trigger-dev"


def test_trigger_dev_example_typechecks():
    npm_ci(EXAMPLE)
    tsc = EXAMPLE / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), f"`npm ci` did not install typescript into {tsc.parent}"
    result = subprocess.run([_tool("node"), str(EXAMPLE / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit",
                             "-p", str(EXAMPLE / "tsconfig.json")],
                            cwd=EXAMPLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"tsc --noEmit failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
