"""The Snakefile and dvc.yaml describe the same study: same commands, same inputs and outputs
(up to a directory containing the other's paths), and the same params keys per stage."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantdet import study

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake_jobs() -> dict[str, dict]:
    out = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--forceall", "--cores", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    jobs = {}
    for block in re.split(r"\n(?=rule |localrule )", out):
        fields = dict(re.findall(r"^    (input|output): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if cmd and cmd.group(1).strip() != "None":  # rule all has no command
            jobs[cmd.group(1).strip()] = {"deps": _paths(fields.get("input", "")),
                                          "outs": _paths(fields.get("output", ""))}
    return jobs


def _paths(field: str) -> set[str]:
    return {p.strip() for p in field.split(",") if p.strip()}


def _dvc_stages() -> dict[str, dict]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            cmd = " ".join(shlex.split(stage.cmd))
            params = set()
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params |= set(dep.params)
            stages[cmd] = {"deps": {d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)},
                           "outs": {o.def_path for o in stage.outs}, "params": params}
    return stages


def _covered(path: str, others: set[str]) -> bool:
    return any(path == o or path.startswith(o + "/") or o.startswith(path + "/") for o in others)


@pytest.fixture(scope="module")
def both():
    if not (ROOT / ".dvc").is_dir() or shutil.which("git") is None:
        pytest.skip("needs the DVC repository (.dvc/) and git")
    return _snakemake_jobs(), _dvc_stages()


def test_same_commands(both):
    snake, dvc = both
    assert set(snake) == set(dvc), {"only snakemake": sorted(set(snake) - set(dvc))[:5],
                                    "only dvc": sorted(set(dvc) - set(snake))[:5]}
    assert len(snake) > 100  # the default study: 100 corruptions, one evaluation per model, ...


def test_same_inputs_and_outputs(both):
    snake, dvc = both
    for cmd in snake:
        for kind in ("deps", "outs"):
            a, b = snake[cmd][kind], dvc[cmd][kind]
            assert all(_covered(p, b) for p in a), (cmd, kind, a, b)
            assert all(_covered(p, a) for p in b), (cmd, kind, a, b)


def test_same_params_keys_as_the_stage_reads(both):
    _, dvc = both
    for cmd, stage in dvc.items():
        argv = cmd.split()
        name = argv[1].replace("-", "_")
        option = {k: argv[argv.index(f"--{k}") + 1] for k in ("role", "model", "generator")
                  if f"--{k}" in argv}
        expected = study.stage_params(name, option.get("role", "student"), model=option.get("model"),
                                      generator=option.get("generator"))
        assert stage["params"] == set(expected), cmd
