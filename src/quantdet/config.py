"""params.yaml: load, merge onto the base study, validate — the same way Snakemake does.

The project's params.yaml is the base study and sets every key; any other params file (a
study in workflow/studies/, the smoke study, a user's) is an overlay: only the keys that
differ. Dicts merge key by key; lists and values replace. There is no other set of defaults.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from quantdet.errors import ParamsError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"
BASE_PARAMS = PROJECT_ROOT / "params.yaml"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def merge(base: dict, overlay: dict) -> dict:
    """overlay on base: dicts merged key by key, anything else replaced (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def base_params() -> dict:
    return read_yaml(BASE_PARAMS)


def compose(*overlays: dict) -> dict:
    """The base study with the overlays applied in order (not validated)."""
    params = base_params()
    for overlay in overlays:
        params = merge(params, overlay)
    return params


def _key_path(error) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "(top level)"


def validate_params(params: dict, source: str = "params.yaml", schema: dict | None = None,
                    check_backbones: bool = False) -> dict:
    """Merge onto the base study and validate; raise ParamsError naming the first bad key.
    check_backbones: also ask each detector family about its architecture (timm's backbones,
    Ultralytics' yamls; imports torch: `quantdet validate` and
    Snakemake's start do, once; the stage commands do not pay for it)."""
    import jsonschema

    schema = schema or load_schema()
    params = compose(params)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key_path(e)}: {e.message}" for e in errors[:10]]
        raise ParamsError("invalid parameters\n  " + "\n  ".join(lines))
    _check_consistency(params, source)
    if check_backbones:
        from quantdet import detectors, study

        for role in ("teacher", *study.students(params)):
            model = study.model_params(params, role)
            try:
                detectors.of_params(model).check(model, study.model_key(role))
            except ParamsError as e:
                raise ParamsError(f"{source}: {e}") from None
        _probe_precisions(params, source)
    return params


def _precision_keys(params: dict):
    """(params key, precision, runtime) of every deployment precision the study lists."""
    from quantdet import study

    for role in study.students(params):
        where = "matrix" if role in study.ROLES else f"{study.model_key(role)}.matrix"
        for precision, runtimes in (study.role_matrix(params, role).get("precisions") or {}).items():
            for runtime in runtimes or []:
                yield f"{where}.precisions.{precision}", precision, runtime


def _check_precisions(params: dict, source: str) -> None:
    """Each listed (precision, runtime) pair is one quantdet runs (quantdet.export.precision)."""
    from quantdet.export.precision import refusal

    for key, precision, runtime in _precision_keys(params):
        reason = refusal(precision, runtime)
        if reason:
            raise ParamsError(f"{source}: {key}: {precision} in {runtime}: not run by quantdet: {reason}")


def _probe_precisions(params: dict, source: str) -> None:
    """Each listed pair runs on this machine: the runtime, asked to run a one-convolution model
    at the precision, ran it so (never a silent float32 fallback)."""
    from quantdet.export.precision import probe

    for key, precision, runtime in _precision_keys(params):
        reason = probe(precision, runtime)
        if reason:
            raise ParamsError(f"{source}: {key}: {precision} in {runtime} cannot run on this machine: {reason}")


def _check_consistency(params: dict, source: str) -> None:
    """Rules a JSON schema cannot say."""
    from quantdet import detectors, study

    for role in ("teacher", *study.students(params)):
        family = study.model_params(params, role).get("detector", detectors.DEFAULT)
        if family not in detectors.names():
            raise ParamsError(f"{source}: {study.model_key(role)}.detector: unknown detector family {family!r} "
                              f"(known: {', '.join(detectors.names())}; `quantdet detectors` lists them)")
    data = params["data"]
    if data["source"] == "coco":
        missing = [k for k, v in data["coco"].items() if not v]
        if missing:
            raise ParamsError(f"{source}: data.coco.{missing[0]}: required when data.source is coco")
    if data["source"] == "voc" and not data["voc"]["root"]:
        raise ParamsError(f"{source}: data.voc.root: required when data.source is voc")
    if data["source"] == "yolo" and not data["yolo"]["data_yaml"]:
        raise ParamsError(f"{source}: data.yolo.data_yaml: required when data.source is yolo")
    _check_matrix(params["matrix"], source)
    _check_students(params, source)
    _check_detector_methods(params, source)
    _check_precisions(params, source)
    corr = params["corruptions"]
    both = sorted(set(corr["names"]) & set(corr.get("heldout", [])))
    if both:
        raise ParamsError(f"{source}: corruptions.heldout: {', '.join(both)} also in corruptions.names "
                          "(a held-out corruption is one mPC does not average over)")
    mixed = params["quant"]["mixed"]
    low = [b for b in params["matrix"]["mixed"] if b < min(mixed["bit_choices"])]
    if low:
        raise ParamsError(f"{source}: matrix.mixed: an average of {low[0]} bits is below "
                          f"the lowest of quant.mixed.bit_choices {mixed['bit_choices']}")
    processes = params["train"]["processes"]
    for key, size in (("train.batch_size", params["train"]["batch_size"]),
                      ("quant.qat.batch_size", params["quant"]["qat"]["batch_size"])):
        if size % processes:
            raise ParamsError(f"{source}: {key}: {size} is the global batch and must divide by "
                              f"train.processes ({processes})")
    pretrain = training_processes(params, "pretrain")
    if params["train"]["batch_size"] % pretrain:
        raise ParamsError(f"{source}: train.batch_size: {params['train']['batch_size']} is the global batch "
                          f"and must divide by train.pretrain_processes ({pretrain})")


def training_processes(params: dict, stage: str) -> int:
    """Data-parallel processes of a training stage: train.pretrain_processes for pretrain
    (where set), else train.processes."""
    train = params["train"]
    if stage == "pretrain" and train.get("pretrain_processes") is not None:
        return int(train["pretrain_processes"])
    return int(train["processes"])


def family_seeds(repeat: dict, family: str) -> list[int]:
    """The repeat seeds of a family (`ptq` or `qat`) from `matrix.repeat`: its `seeds`,
    restricted to `{family}_seeds` where that is given (a family may take fewer seeds, never
    others: `seeds: []` turns every repeat off)."""
    own = repeat.get(f"{family}_seeds")
    return [s for s in repeat.get("seeds", []) if own is None or s in own]


def _check_matrix(matrix: dict, source: str) -> None:
    """Every listed method is registered (quantdet.methods) and every repeat is of a listed one."""
    from quantdet.methods import get_method, names

    if "mixed" in matrix["ptq"]:
        raise ParamsError(f"{source}: matrix.ptq: mixed: list mixed-precision budgets in matrix.mixed")
    for family in ("ptq", "qat", "peer", "mimic"):
        for method in matrix[family]:
            try:
                get_method(family, method)
            except KeyError:
                raise ParamsError(f"{source}: matrix.{family}: unknown method {method!r} (registered: "
                                  f"{', '.join(names(family))}; see `quantdet methods`)") from None
    repeat = matrix["repeat"]
    for family in ("ptq", "qat"):
        extra = [m for m in repeat[family] if m not in matrix[family]] if family_seeds(repeat, family) else []
        if extra:
            raise ParamsError(f"{source}: matrix.repeat.{family}: {', '.join(extra)} not in "
                              f"matrix.{family} (a repeat re-runs methods the study runs)")


def _check_students(params: dict, source: str) -> None:
    """An extra student's own matrix lists registered methods; zero-shot methods are the
    study student's alone: their generated sets (data/synthetic/<generator>) are drawn from
    `student-fp32`, one set per generator, which the zero-shot comparisons calibrate on."""
    from quantdet import study
    from quantdet.methods import get_method, names

    for role in study.extra_students(params):
        key = f"{study.model_key(role)}.matrix"
        m = study.role_matrix(params, role)
        for family in ("ptq", "qat", "peer"):
            for method in m[family]:
                try:
                    found = get_method(family, method)
                except KeyError:
                    raise ParamsError(f"{source}: {key}.{family}: unknown method {method!r} (registered: "
                                      f"{', '.join(names(family))}; see `quantdet methods`)") from None
                if getattr(found, "generated", None):
                    raise ParamsError(
                        f"{source}: {key}.{family}: {method} calibrates on images generated from "
                        f"models.student's FP32 network (data/synthetic/{found.generated}), not from "
                        f"{role}'s: list it in this student's matrix without it (its own `matrix` key), "
                        f"or study {role} as models.student")


def _check_detector_methods(params: dict, source: str) -> None:
    """A method a student's detector family cannot serve (its registry entry's `unsupported`,
    by method name or by stage family) is refused with the family's reason."""
    from quantdet import detectors, study

    for role in ("teacher", *study.students(params)):
        matrix = study.role_matrix(params, "student" if role == "teacher" else role)
        family = detectors.of_params(study.model_params(params, role))
        if not family.unsupported or (role == "teacher" and not matrix["mimic"]):
            continue
        listed = [(stage, m) for stage in ("ptq", "qat", "peer", "mimic") for m in matrix[stage]]
        listed += [("ptq", "mixed")] if matrix["mixed"] else []
        for stage, method in listed:
            if role == "teacher" and stage != "mimic":
                continue
            reason = family.unsupported.get(method) or family.unsupported.get(stage)
            if reason:
                where = "matrix" if role in study.ROLES else f"{study.model_key(role)}.matrix"
                raise ParamsError(f"{source}: {where}.{stage}: {method} cannot quantize the {role}'s "
                                  f"detector ({family.name}): {reason}")


def load_params(path: str | Path = "params.yaml", check_backbones: bool = False) -> dict:
    """A params file (the base study or an overlay on it), merged and validated."""
    return validate_params(read_yaml(path), source=str(path), check_backbones=check_backbones)


def select(params: dict, keys: list[str]) -> dict:
    """The values of dotted params keys, e.g. ['train', 'models.student']."""
    out = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def params_hash(values: dict) -> str:
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
