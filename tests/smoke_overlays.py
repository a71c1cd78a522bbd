"""Smaller forms of the smoke study (tests/smoke/params.yaml) for tests that rerun it whole
through another runner (SLURM, DVC): one job of each stage."""
from pathlib import Path

import yaml

SMOKE = Path(__file__).resolve().parent / "smoke" / "params.yaml"


def one_job_per_stage() -> dict:
    """The smoke overlay with one job of each stage (minmax and dacal PTQ, DA-QAT, mimic and its
    teacher, the peer, one deployment precision), without the detector axis, mixed precision, zero-shot or repeat seeds: a
    runner runs every method's jobs alike, and the whole matrix is the Snakemake smoke study's
    (tests/test_workflow_agreement.py: DVC plans the same jobs). One corruption and the held-out
    one (each at the smoke study's severities, so that each condition's metrics compare with its
    run): every evaluation reads each condition alike, and the smoke study evaluates all of its
    own. Latency timed in onnxruntime only: the smoke study times OpenVINO too."""
    overlay = yaml.safe_load(SMOKE.read_text())
    overlay["models"]["students"] = None
    overlay["corruptions"]["suites"] = ["imagecorruptions"]   # the other suites are more conditions alike
    overlay["corruptions"]["names"] = ["gaussian_noise"]   # held out: speckle_noise
    overlay["export"]["latency_runtimes"] = ["onnxruntime"]
    overlay["matrix"].update(ptq=["minmax", "dacal"], qat=["daqat"], mixed=[],
                             repeat={"seeds": [], "ptq": [], "qat": []},
                             precisions={"int8_dynamic": ["onnxruntime"]})
    return overlay


def slurm_study() -> dict:
    """The SLURM run's study (tests/test_cluster.py): one job of each kind a cluster runs
    differently (pre-training, cancelled and resumed; PTQ; QAT; mimic and its teacher; export;
    the deployed evaluation), its results compared model by model with the local smoke study.
    What every method adds is the same job kind again (the DVC study and the Snakemake smoke
    study run them)."""
    overlay = one_job_per_stage()
    overlay["matrix"].update(ptq=["minmax"], peer=[], precisions={}, runtimes=["onnxruntime"])
    return overlay
