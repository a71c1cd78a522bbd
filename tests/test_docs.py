"""The README a newcomer reads in two minutes, and the documentation site's pages: the README's
commands work as written, its params snippets are valid, its links lead to pages; the methods
page has a section for every registered method."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantdet.config import validate_params
from quantdet.methods import FAMILIES, methods

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README = (ROOT / "README.md").read_text()
# Copied from a finished default study by scripts/readme_figure.py (never drawn by hand); once
# committed, the README must show it.
FIGURE = "docs/assets/accuracy_vs_robustness.png"


def _blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _commands(text):
    for block in _blocks(text, "bash"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                yield command


def test_the_readme_is_short_and_keeps_the_two_commands():
    assert len(README.splitlines()) <= 150
    two = _blocks(README, "bash")[0]
    assert two.startswith("make study   # creates .venv, installs the locked dependencies, runs the default study")
    assert "make test    # creates .venv if needed, runs the test suite" in two
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M), "CI runs the README's test command"


def test_every_command_of_the_readme_works_as_written(tmp_path):
    commands = list(_commands(README))
    assert {"make study", "make test", "quantdet methods", "make docs"} <= set(commands)
    targets = re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
    for command in commands:
        argv = command.split()
        if argv[0] == ".":                              # activating the venv
            assert (ROOT / argv[1]).parent.name == "bin"
        elif argv[0] == "make":                         # a target of the Makefile, which make can plan
            assert argv[1] in targets, command
            plan = subprocess.run(["make", "-n", argv[1]], cwd=ROOT, capture_output=True, text=True)
            assert plan.returncode == 0, plan.stderr
        elif argv[0] == "quantdet":                     # runs in any folder: here an empty one
            run = subprocess.run([str(BIN / "quantdet"), *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
            assert run.returncode == 0, (command, run.stderr[-2000:])
        else:
            pytest.fail(f"a README command this test does not know how to check: {command}")


def test_the_readme_params_snippets_are_valid():
    snippets = _blocks(README, "yaml")
    assert len(snippets) >= 2
    for snippet in snippets:
        validate_params(yaml.safe_load(snippet), source="README.md")


def test_the_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert "docs/results.md" in links
    assert ((ROOT / FIGURE).exists()) <= (FIGURE in links), "a committed figure the README does not show"
    for link in links:
        if link.startswith("http"):
            continue
        assert (ROOT / link).is_file(), link


def test_the_methods_page_has_a_section_for_every_registered_method():
    page = (ROOT / "docs" / "methods.md").read_text()
    sections = re.split(r"^## ", page, flags=re.M)
    for family in FAMILIES:
        section = next(s for s in sections if f"(`matrix.{family}`)" in s.splitlines()[0]
                       or (family == "generate" and "zeroshot-data" in s.splitlines()[0]))
        for method in methods(family):
            assert re.search(rf"^### `{method.name}`", section, flags=re.M), (family, method.name)
