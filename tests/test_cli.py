"""The first commands a newcomer types work in any folder, and every stage's --help says what it
reads and writes."""
import subprocess
import sys
from pathlib import Path

import pytest

from quantdet import detectors
from quantdet.cli import READS_WRITES, _parser
from quantdet.methods import FAMILIES, methods

BIN = Path(sys.executable).parent


def _quantdet(*args, cwd):
    return subprocess.run([str(BIN / "quantdet"), *args], cwd=cwd, capture_output=True, text=True)


def test_the_registries_are_listed_outside_a_study_folder(tmp_path):
    assert not (tmp_path / "params.yaml").exists()
    listed = _quantdet("methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for family in FAMILIES:
        assert f"{family}:" in listed.stdout
        for method in methods(family):
            assert f"  {method.name} " in listed.stdout, (family, method.name)
    listed = _quantdet("detectors", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    # the project's own families (another test of the session may have registered its toy one)
    own = [f for f in detectors.families() if type(f).__module__.startswith("quantdet.detectors")]
    assert {"centernet", "yolo", "retinanet", "fcos", "ssdlite"} <= {f.name for f in own}
    for family in own:
        assert listed.stdout.count(f"{family.name}: ") == 1, family.name
    assert _quantdet("--help", cwd=tmp_path).returncode == 0


def test_a_stage_outside_a_study_folder_names_the_missing_file(tmp_path):
    run = _quantdet("study-table", cwd=tmp_path)
    assert run.returncode == 2 and "params.yaml: file not found" in run.stderr


@pytest.mark.parametrize("stage", sorted(READS_WRITES))
def test_every_stage_help_says_what_it_reads_and_writes(stage, capsys):
    with pytest.raises(SystemExit) as done:
        _parser().parse_args([stage, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    reads, writes = READS_WRITES[stage]
    assert f"Reads: {reads}." in text and f"Writes: {writes}." in text
