"""A smaller series of the fault campaign (scripts/fault_campaign.py, `make faults`): the smoke
study killed again and again through Snakemake and DVC, its results on a file system that
fills up, two studies at once on one MLflow server (stopped and started again meanwhile) and
one DVC cache; after each, the command the README gives finishes it, equal to the uninterrupted
smoke study, with each job's MLflow run once and nothing half-written left behind."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("fault_campaign", ROOT / "scripts" / "fault_campaign.py")
campaign = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign)


def _check(row):
    assert row["completed"], row
    out, runs = row["outputs"], row["runs"]
    assert out["checked"] > 0 and not out["differing"], out
    assert not out["leftovers"], out["leftovers"]
    assert not runs["lost"] and not runs["duplicated"], runs


def _trained_study() -> dict:
    """The smallest study with a pre-training and a QAT job, both resumed from their
    checkpoints when killed (`make faults` kills the whole smoke study, 20 times per runner)."""
    overlay = campaign.tiny_overlay()
    overlay["matrix"]["qat"] = ["daqat"]
    return overlay


@pytest.mark.parametrize("runner,kills,span", [("snakemake", 3, 60), ("dvc", 3, 45)])
def test_killed_again_and_again_the_study_ends_as_if_never_killed(smoke_study, tmp_path, runner, kills, span):
    """The kills land in the first half of the study (a kill at most span / kills * 2 seconds
    into each run), so that all of them happen on a faster machine too."""
    if runner == "dvc" and subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("dvc needs git")
    overlay = _trained_study() if runner == "snakemake" else campaign.tiny_overlay()
    row = campaign.fault_kills(runner, tmp_path, smoke_study, kills, seed=1, log=print, span=span,
                               overlay=overlay)
    assert len(row["events"]) == kills, row["events"]
    assert {e["mode"] for e in row["events"]} <= {"job", "runner"}
    _check(row)


def test_a_full_disk_fails_the_job_saying_so_and_the_rerun_finishes(smoke_study, tmp_path):
    # the tmpfs is a third of what the reference study wrote: a study this size fills it
    row = campaign.fault_full_disk(tmp_path, smoke_study, log=print, overlay=campaign.dvc_overlay())
    if row["why"].startswith("not run"):
        pytest.skip(row["why"])
    assert row["failed_first"] and row["message"], row
    _check(row)


def test_two_studies_at_once_on_one_server_that_stops_and_one_dvc_cache(smoke_study, tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("dvc needs git")
    row = campaign.fault_two_studies(tmp_path, smoke_study, log=print, stop_server=20,
                                     overlay=campaign.tiny_overlay())
    _check(row)
    assert row["cache"]["entries"] > 0 and not row["cache"]["clobbered"]


def test_the_table_counts_what_each_fault_left():
    rows = [{"fault": "kill-snakemake", "trials": 3, "completed": True,
             "outputs": {"checked": 10, "identical": 9, "differing": ["results/models/a.pt"], "leftovers": []},
             "runs": {"lost": [], "duplicated": ["qat:student-qat-daqat-w8a8"]}},
            {"fault": "full-disk", "trials": 0, "completed": False, "why": "not run: no unshare"}]
    text = campaign.table(rows)
    assert "| kill-snakemake | 3 | yes | 9/10 files; differ: results/models/a.pt | 0 | 1 | 0 |" in text
    assert "| full-disk | 0 | no (not run: no unshare) |" in text
