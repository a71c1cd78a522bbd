"""scripts/lock_overlay.py: what .venv-litert installs over .venv, from the two hash locks."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lock_overlay.py"

BASE = """#
# comment
numpy==2.4.6 \\
    --hash=sha256:aaa
    # via torch
typing-extensions==4.16.0 \\
    --hash=sha256:bbb \\
    --hash=sha256:ccc
torch==2.14.1 \\
    --hash=sha256:ddd
"""
OVERLAY = """numpy==2.4.6 \\
    --hash=sha256:aaa
typing-extensions==4.12.2 \\
    --hash=sha256:eee
xdsl==0.28.0 \\
    --hash=sha256:fff
    # via litert-converter
"""


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout


def test_the_overlay_holds_only_what_the_base_lacks_or_pins_otherwise(tmp_path):
    (tmp_path / "base.lock").write_text(BASE)
    (tmp_path / "overlay.lock").write_text(OVERLAY)
    out = _run(str(tmp_path / "base.lock"), str(tmp_path / "overlay.lock"))
    assert out == "typing-extensions==4.12.2 \\\n    --hash=sha256:eee\nxdsl==0.28.0 \\\n    --hash=sha256:fff\n"
    constraints = _run(str(tmp_path / "base.lock"), "--constraints", "typing_extensions")
    assert constraints == "numpy==2.4.6\ntorch==2.14.1\n"


def test_the_project_locks_agree_on_every_shared_package_but_the_conflicting_ones():
    """requirements-litert.lock holds .venv's packages at requirements.lock's versions, but for
    typing-extensions and what needs it newer (Makefile: lock-litert)."""
    out = _run(str(ROOT / "requirements.lock"), str(ROOT / "requirements-litert.lock"))
    names = [line.split("==")[0] for line in out.splitlines() if "==" in line]
    base = _run(str(ROOT / "requirements.lock"), "--constraints")
    differing = {n for n in names if f"\n{n}==" in "\n" + base}
    assert differing == {"typing-extensions", "pydantic", "pydantic-core", "typing-inspection", "anyio"}
    assert "litert-torch" in names and "torch" not in names
