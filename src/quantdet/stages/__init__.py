"""The stages of a study, one thin driver each (`quantdet <stage>` calls these; the Snakefile
and the generated dvc.yaml call `quantdet <stage>`). Each returns a summary and logs its MLflow
run. What differs between methods lives with the method (quantdet.methods), not here."""
from quantdet.stages.common import CalibrationSet, split_fingerprint
from quantdet.stages.data import corrupt, prepare
from quantdet.stages.evaluate import evaluate
from quantdet.stages.export import export
from quantdet.stages.ablation import ablation
from quantdet.stages.intervals import intervals
from quantdet.stages.precision import precision
from quantdet.stages.quantize import mimic, peer, ptq, qat
from quantdet.stages.report import report
from quantdet.stages.train import detector_config, pretrain, use_mixed_precision
from quantdet.stages.zeroshot import zeroshot_data

__all__ = ["CalibrationSet", "split_fingerprint", "prepare", "corrupt", "pretrain", "detector_config",
           "use_mixed_precision", "zeroshot_data", "ptq", "qat", "mimic", "peer", "export", "precision", "evaluate", "ablation", "intervals", "report"]
