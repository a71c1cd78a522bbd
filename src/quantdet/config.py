"""params.yaml: load, fill defaults from the schema, validate — the same way Snakemake does."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from quantdet.errors import ParamsError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return root["$defs"][ref.split("/")[-1]]
    return schema


def fill_defaults(instance, schema: dict, root: dict | None = None):
    """Insert the schema's `default:` values for keys the instance leaves out (in place)."""
    root = root or schema
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            sub = _resolve(sub, root)
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(instance[key], sub, root)
    return instance


def _key_path(error) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "(top level)"


def validate_params(params: dict, source: str = "params.yaml", schema: dict | None = None) -> dict:
    """Fill defaults and validate; raise ParamsError naming the first bad key."""
    import jsonschema

    schema = schema or load_schema()
    params = fill_defaults(copy.deepcopy(params), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key_path(e)}: {e.message}" for e in errors[:10]]
        raise ParamsError("invalid parameters\n  " + "\n  ".join(lines))
    _check_consistency(params, source)
    return params


def _check_consistency(params: dict, source: str) -> None:
    """Rules a JSON schema cannot say."""
    data = params["data"]
    if data["source"] == "coco":
        missing = [k for k, v in data["coco"].items() if not v]
        if missing:
            raise ParamsError(f"{source}: data.coco.{missing[0]}: required when data.source is coco")
    if data["source"] == "voc" and not data["voc"]["root"]:
        raise ParamsError(f"{source}: data.voc.root: required when data.source is voc")
    if data["source"] == "yolo" and not data["yolo"]["data_yaml"]:
        raise ParamsError(f"{source}: data.yolo.data_yaml: required when data.source is yolo")
    for role in ("teacher", "student"):
        _check_backbone(params["models"][role]["backbone"], f"models.{role}.backbone", source)
    repeat, quant = params["study"]["repeat"], params["quant"]
    for family, runs in (("ptq", quant["ptq"]["methods"]), ("qat", quant["qat"]["recipes"])):
        extra = [m for m in repeat[family] if m not in runs] if repeat["seeds"] else []
        if extra:
            key = "ptq.methods" if family == "ptq" else "qat.recipes"
            raise ParamsError(f"{source}: study.repeat.{family}: {', '.join(extra)} not in quant.{key} "
                              "(a repeat re-runs methods the study runs)")
    corr = params["corruptions"]
    both = sorted(set(corr["names"]) & set(corr.get("heldout", [])))
    if both:
        raise ParamsError(f"{source}: corruptions.heldout: {', '.join(both)} also in corruptions.names "
                          "(a held-out corruption is one mPC does not average over)")
    mixed = params["quant"]["mixed"]
    low = [b for b in mixed["budgets"] if b < min(mixed["bit_choices"])]
    if low:
        raise ParamsError(f"{source}: quant.mixed.budgets: an average of {low[0]} bits is below "
                          f"the lowest of quant.mixed.bit_choices {mixed['bit_choices']}")
    processes = params["train"]["processes"]
    for key, size in (("train.batch_size", params["train"]["batch_size"]),
                      ("quant.qat.batch_size", params["quant"]["qat"]["batch_size"])):
        if size % processes:
            raise ParamsError(f"{source}: {key}: {size} is the global batch and must divide by "
                              f"train.processes ({processes})")
    from quantdet.study import ZEROSHOT_GENERATOR

    zeroshot = params["quant"]["zeroshot"]
    for key in ("ptq_methods", "qat_methods"):
        for method in zeroshot[key]:
            if ZEROSHOT_GENERATOR[method] not in zeroshot["generators"]:
                raise ParamsError(f"{source}: quant.zeroshot.{key}: {method} reads generated set "
                                  f"{ZEROSHOT_GENERATOR[method]!r}, which quant.zeroshot.generators "
                                  "does not list")


def _check_backbone(name: str, key: str, source: str) -> None:
    """A backbone timm does not have fails here, at validation, not when `pretrain` starts."""
    import difflib

    import timm  # lazily: it imports torch, which reading params does not otherwise need

    # Hub and local weights name no registered architecture; a `.tag` names pretrained weights.
    if ":" in name:
        return
    known = timm.list_models()
    architecture = name.split(".", 1)[0]
    if architecture not in known:
        close = difflib.get_close_matches(architecture, known, n=5)
        hint = f" (close names: {', '.join(close)})" if close else " (timm.list_models() lists them)"
        raise ParamsError(f"{source}: {key}: timm has no model {name!r}{hint}")


def load_params(path: str | Path = "params.yaml") -> dict:
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
    return validate_params(raw, source=str(path))


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
