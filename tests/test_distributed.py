"""Data-parallel training: 2 CPU processes with gloo under torchrun against one process with the
same global batch.

Tolerances: with no BatchNorm and a per-image mean loss (tests/ddp_fit_worker.py) the two runs
are the same computation up to float rounding: weights within 1e-5. The detector itself has
BatchNorm (statistics per process, over half the batch) and a loss normalised by each process's
number of objects, so `quantdet pretrain` with train.processes 2 is close, not equal: each
epoch's mean training loss within 2% of the single-process run's.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from quantdet.config import validate_params
from quantdet.errors import ParamsError
from quantdet.train.loop import GlobalBatchShards

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "tests" / "smoke" / "params.yaml"


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_rank_shards_make_up_the_single_process_batches():
    size, batch, seed = 22, 8, 1234
    single = list(GlobalBatchShards(size, batch, True, seed, 0, 1))
    assert len(set(sum(single, []))) == 16 and sorted(sum(single, [])) != list(range(16))
    shards = [list(GlobalBatchShards(size, batch, True, seed, rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 2
    for i, expected in enumerate(single):
        assert len(shards[0][i]) == len(shards[1][i]) == batch // 2
        assert sorted(shards[0][i] + shards[1][i]) == sorted(expected)
    assert list(GlobalBatchShards(size, batch, True, seed + 1, 0, 1)) != single
    # a dataset smaller than the batch is one batch, split as evenly as it goes
    tail = [list(GlobalBatchShards(5, batch, False, seed, rank, 2)) for rank in range(2)]
    assert [len(t[0]) for t in tail] == [3, 2] and sorted(tail[0][0] + tail[1][0]) == list(range(5))


def test_global_batch_must_divide_by_the_processes():
    params = yaml.safe_load(SMOKE.read_text())
    params["train"]["processes"] = 3
    with pytest.raises(ParamsError, match="train.batch_size: 16 .* train.processes"):
        validate_params(params)
    params["train"]["batch_size"] = 18
    with pytest.raises(ParamsError, match="quant.qat.batch_size"):
        validate_params(params)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_global_batch(tmp_path):
    worker = ROOT / "tests" / "ddp_fit_worker.py"
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one.pt"), "8"], check=True,
                   env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(worker), str(tmp_path / "two.pt"), "8"],
                   check=True, env=_env(), timeout=300)
    one = torch.load(tmp_path / "one.pt")
    two = torch.load(tmp_path / "two.pt")
    torch.manual_seed(0)
    from tests.ddp_fit_worker import NoNormNet

    initial = NoNormNet().state_dict()
    for name, value in one["state_dict"].items():
        assert (value - initial[name]).abs().max() > 1e-3, name  # it trained
        assert torch.allclose(value, two["state_dict"][name], rtol=0, atol=1e-5), name
    losses = [[e["loss"] for e in run["history"]["epochs"]] for run in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.slow
def test_pretrain_with_two_processes_matches_one_and_rank_0_alone_writes(tmp_path):
    """`quantdet pretrain` re-launches itself under torchrun; one model file, one MLflow run."""
    params = yaml.safe_load(SMOKE.read_text())
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, processes in ((one, 1), (two, 2)):
        folder.mkdir()
        params["train"]["processes"] = processes
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
    quantdet = str(BIN / "quantdet")
    subprocess.run([quantdet, "prepare", "--params", "params.yaml"], cwd=one, check=True,
                   env=_env(QUANTDET_TRACKING="off"), capture_output=True, timeout=300)
    shutil.copytree(one / "data", two / "data")
    for folder in (one, two):
        run = subprocess.run([quantdet, "pretrain", "--params", "params.yaml", "--role", "student",
                              "--log", "logs/pretrain.log"], cwd=folder, env=_env(QUANTDET_TRACKING="on"),
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    histories = [json.loads((f / "results/models/student-fp32.train.json").read_text())["history"]
                 for f in (one, two)]
    losses = [[e["loss"] for e in h["epochs"]] for h in histories]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    checkpoint = torch.load(two / "results/checkpoints/student-fp32.ckpt", weights_only=False)
    assert checkpoint["run"]["processes"] == 2
    log = (two / "logs/pretrain.log").read_text()  # the launcher's lines, then rank 0's alone
    assert "pretrain: 2 data-parallel processes under torchrun" in log
    assert log.count("quantdet pretrain --params") == 2

    # tracking.log: report: the job queued its run (rank 0 alone); the report job, or this, logs it
    subprocess.run([quantdet, "track-flush", "--params", "params.yaml"], cwd=two, check=True,
                   env=_env(QUANTDET_TRACKING="on"), capture_output=True, timeout=300)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{two / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quantdet").experiment_id])
    assert [r.data.tags["quantdet.stage"] for r in runs if r.data.tags.get("quantdet.role") == "job"] == ["pretrain"]


def test_loader_workers_do_not_change_the_result(tmp_path):
    """`train.workers` only moves image loading to other processes (augmentation is seeded per
    image), so the trained weights are the same."""
    from tests.test_train import _same_weights, _train

    alone, _ = _train(tmp_path / "alone.ckpt", epochs=1)
    loaded, _ = _train(tmp_path / "workers.ckpt", epochs=1, workers=2)
    assert _same_weights(alone, loaded)


def test_pretraining_may_run_more_processes_than_the_other_training_stages():
    from quantdet.config import training_processes
    params = yaml.safe_load(SMOKE.read_text())
    params["train"].update(processes=1, pretrain_processes=2)
    validate_params(params)
    assert [training_processes(params, s) for s in ("pretrain", "qat", "mimic")] == [2, 1, 1]
    params["train"]["pretrain_processes"] = None   # null: train.processes
    assert training_processes(params, "pretrain") == 1
    params["train"].update(batch_size=15, pretrain_processes=2)
    params["quant"]["qat"]["batch_size"] = 16
    with pytest.raises(ParamsError, match="train.batch_size: 15 .* train.pretrain_processes"):
        validate_params(params)


@pytest.mark.slow
def test_forced_ddp_trains_one_process_through_ddp_like_without(tmp_path):
    """QUANTDET_FORCE_DDP=1 (the GPU check's nccl run at world size 1): one torchrun process
    joins a process group and trains through DDP, to the weights of a plain run."""
    worker = ROOT / "tests" / "ddp_fit_worker.py"
    subprocess.run([sys.executable, str(worker), str(tmp_path / "plain.pt"), "8"], check=True,
                   env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=1", str(worker), str(tmp_path / "ddp.pt"), "8"],
                   check=True, env=_env(QUANTDET_FORCE_DDP="1"), timeout=300)
    plain, ddp = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "ddp.pt")
    assert plain["history"]["numerics"]["ddp"] is False
    assert ddp["history"]["numerics"]["ddp"] is True
    for name, value in plain["state_dict"].items():
        assert torch.allclose(value, ddp["state_dict"][name], rtol=0, atol=1e-6), name
