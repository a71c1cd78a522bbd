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
    """A params file's mapping; a damaged or cut-short file is refused naming file and line
    (`check_params_file`)."""
    return _read_checked(path)[0]


def check_params_file(path: str | Path) -> dict[tuple, int]:
    """Refuse a params file that is not a whole one, naming the file and the line: not UTF-8,
    not valid YAML, not a mapping at the top, or cut short. Returns the line of each key
    (key path -> 1-based line) for the messages of `validate_params(lines=...)`.

    Cut short: a file must end with a line break. A file cut at an arbitrary byte ends
    mid-line unless the cut fell just after a line break; then what is left is a file of
    whole lines, refused by YAML (an open bracket or quote) or by the schema and consistency
    checks (a key left without its value, the base study missing keys) or, where it is a
    valid shorter study, indistinguishable from one (scripts/fault_damage.py measures this)."""
    return _read_checked(path)[1]


def _read_checked(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: a folder, not a params file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}:{line}: not UTF-8 text (byte {e.start}): a damaged file? "
                          "Restore it from your copy or version control") from None
    if not text.strip():
        raise ParamsError(f"{path}:1: empty: a params file sets at least one section "
                          "(the project's params.yaml sets them all)")
    lines = text.split("\n")
    if not text.endswith("\n"):
        raise ParamsError(f"{path}:{len(lines)}: the file ends mid-line, without a line break after "
                          f"{lines[-1][-40:]!r}: cut short (an interrupted copy or save)? Restore it from "
                          "your copy or version control; if the line is complete, end it with a line break")
    _check_end_marker(path, lines)
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p) or str(e)
        last = len(lines) - 1
        cut = f" (the file has {last} lines: cut short?)" if mark and mark.line + 1 >= last else ""
        raise ParamsError(f"{where}: not valid YAML: {problem}{cut}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}:1: expected a mapping of sections at the top level")
    key_lines = _key_lines(node)
    key_lines[()] = text.count("\n")   # the top level: where the file ends
    return raw, key_lines


# A params file may declare, in its leading comments, that it ends with a marker line; then a
# file cut anywhere (even just after a line break, where the lines left may be a valid shorter
# study) is refused. Opt-in, so that a file written by hand needs nothing; `quantdet compose`
# and the study files the project ships declare it.
END_DECLARATION = '# quantdet: ends with "# end"'
END_MARKER = "# end"


def _check_end_marker(path: Path, lines: list[str]) -> None:
    declared = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith(END_DECLARATION):
            declared = number
            break
        if stripped and not stripped.startswith("#") and stripped != "---":
            return   # the leading comments are over: not declared
    if declared is None:
        return
    filled = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    last_number, last = filled[-1]
    if last != END_MARKER:
        raise ParamsError(f"{path}:{last_number}: cut short: line {declared} declares that the file ends "
                          f"with the line {END_MARKER!r}, and its last line is {last[:60]!r}. Restore it from "
                          f"your copy or version control (or, if it is complete, end it with {END_MARKER!r})")


def _with_line(error: ParamsError, source: str, lines: dict[tuple, int] | None) -> ParamsError:
    """'source: a.b[0].c: ...' as 'source:LINE: a.b[0].c: ...' (the line of the key, or of its
    nearest written parent)."""
    message = str(error)
    if not lines or not message.startswith(f"{source}: "):
        return error
    key = message[len(source) + 2:].split(":", 1)[0]
    path = []
    for part in key.replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            path.append(int(part[1:-1]))
        elif part:
            path.append(part)
    where = _where(source, lines, path)
    return ParamsError(where + message[len(source):]) if where != source else error


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    """Key path (str keys, int list indices) -> the 1-based line where its value is written."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            out[path] = key.start_mark.line + 1
            out.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, value in enumerate(node.value):
            path = (*prefix, index)
            out[path] = value.start_mark.line + 1
            out.update(_key_lines(value, path))
    return out


def _where(source: str, lines: dict[tuple, int] | None, key_path) -> str:
    """`source:line` of the nearest written key of `key_path`, else `source`."""
    if not lines:
        return source
    key_path = tuple(key_path)
    for n in range(len(key_path), 0, -1):
        if key_path[:n] in lines:
            return f"{source}:{lines[key_path[:n]]}"
    return f"{source}:{lines[()]}" if () in lines else source


def base_params() -> dict:
    """The project's params.yaml, which sets every key the schema names: a key missing from it
    (the file cut short just after a line break) is refused naming the file and line."""
    raw, lines = _read_checked(BASE_PARAMS)
    missing = _unset_keys(load_schema(), raw)
    if missing:
        raise ParamsError(f"{BASE_PARAMS}:{lines[()]}: the base study sets every key of the schema, and "
                          f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} are not set: cut "
                          "short (the file ends here)? Restore it from version control (`git checkout params.yaml`)")
    return raw


def _unset_keys(schema: dict, params, prefix: str = "") -> list[str]:
    """The schema's object properties (not through $ref) that `params` does not set."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or "properties" not in schema:
        return []
    missing = []
    for key, sub in schema["properties"].items():
        name = f"{prefix}.{key}" if prefix else key
        if not isinstance(params, dict) or key not in params:
            missing.append(name)
        else:
            missing += _unset_keys(sub, params[key], name)
    return missing


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


CORRUPTION_KEYS = ("suites", "names", "heldout", "severities", "seed", "images")


def _check_suites(corr: dict, source) -> None:
    """corruptions.suites: registered suites, imagecorruptions among them (mPC and rPC are its);
    every other key of corruptions is a registered suite's settings, checked by the suite; no
    degradation written by two suites."""
    from quantdet.corruptions import suites

    known = suites.names()
    chosen = corr.get("suites", [suites.DEFAULT])
    for name in chosen:
        if name not in known:
            raise ParamsError(f"{source}: corruptions.suites: {name!r} is not a degradation suite "
                              f"(known: {', '.join(known)}; `quantdet suites` lists them)")
    if suites.DEFAULT not in chosen:
        raise ParamsError(f"{source}: corruptions.suites: {suites.DEFAULT} is required "
                          "(mPC and rPC are its figures; the other suites are reported beside them)")
    for key in corr:
        if key in CORRUPTION_KEYS:
            continue
        if key not in known or key == suites.DEFAULT:
            raise ParamsError(f"{source}: corruptions.{key}: not a setting of corruptions nor a degradation suite "
                              f"(suites: {', '.join(n for n in known if n != suites.DEFAULT)})")
        suites.get(key).check(corr[key], f"{source}: corruptions.{key}")
    seen = {}
    for name, conditions in suites.study_conditions(corr).items():
        for corruption in conditions:
            if corruption in seen:
                raise ParamsError(f"{source}: corruptions.suites: {corruption} is written by both "
                                  f"{seen[corruption]} and {name}")
            seen[corruption] = name


def validate_params(params: dict, source: str = "params.yaml", schema: dict | None = None,
                    check_backbones: bool = False, lines: dict[tuple, int] | None = None) -> dict:
    """Merge onto the base study and validate; raise ParamsError naming the first bad key.
    check_backbones: also ask each detector family about its architecture (timm's backbones,
    Ultralytics' yamls; imports torch: `quantdet validate` and
    Snakemake's start do, once; the stage commands do not pay for it).
    lines: the file's key lines (check_params_file): a schema error names the line."""
    import jsonschema

    schema = schema or load_schema()
    params = compose(params)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        found = [f"{_where(source, lines, e.absolute_path)}: {_key_path(e)}: {e.message}" for e in errors[:10]]
        hint = ""
        if lines and any(e.validator == "required" or e.instance is None for e in errors):
            hint = (f"\n  ({source} ends at line {lines.get((), '?')}: a key without its value or a "
                    "missing section may mean the file was cut short; restore it from your copy or version control)")
        raise ParamsError("invalid parameters\n  " + "\n  ".join(found) + hint)
    try:
        _check_consistency(params, source)
    except ParamsError as e:
        raise _with_line(e, source, lines) from None
    if check_backbones:
        from quantdet import detectors, study

        for role in ("teacher", *study.students(params)):
            model = study.model_params(params, role)
            try:
                detectors.of_params(model).check(model, study.model_key(role))
            except ParamsError as e:
                raise _with_line(ParamsError(f"{source}: {e}"), source, lines) from None
        try:
            _probe_precisions(params, source)
        except ParamsError as e:
            raise _with_line(e, source, lines) from None
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
    at the precision, ran it so (never a silent float32 fallback). A pair in onnxruntime that
    cannot is refused (its job would write that runtime's own model file); one in OpenVINO or
    PyTorch is said here and not run: its precision job records why, and the report says it
    (a study runs on any CPU; a cluster's compute node decides for itself)."""
    import sys

    from quantdet.export.precision import probe

    for key, precision, runtime in dict.fromkeys(_precision_keys(params)):
        reason = probe(precision, runtime)
        if reason and runtime == "onnxruntime":
            raise ParamsError(f"{source}: {key}: {precision} in {runtime} cannot run on this machine: {reason}")
        if reason:
            print(f"quantdet: {source}: {key}: {precision} in {runtime} will not run on this machine "
                  f"({reason}); the report will say so", file=sys.stderr)


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
    _check_suites(corr, source)
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
    by method name or by stage family), or one that serves other families only (the method's
    `detectors`), is refused with the reason."""
    from quantdet import detectors, study
    from quantdet.methods import get_method

    for role in ("teacher", *study.students(params)):
        matrix = study.role_matrix(params, "student" if role == "teacher" else role)
        family = detectors.of_params(study.model_params(params, role))
        if role == "teacher" and not matrix["mimic"]:
            continue
        listed = [(stage, m) for stage in ("ptq", "qat", "peer", "mimic") for m in matrix[stage]]
        listed += [("ptq", "mixed")] if matrix["mixed"] else []
        for stage, method in listed:
            if role == "teacher" and stage != "mimic":
                continue
            reason = family.unsupported.get(method) or family.unsupported.get(stage)
            served = get_method(stage, method).detectors if method != "mixed" else ()
            if not reason and served and family.name not in served:
                reason = f"{method} serves the {', '.join(served)} detector famil{'ies' if len(served) > 1 else 'y'} only"
            where = "matrix" if role in study.ROLES else f"{study.model_key(role)}.matrix"
            if reason:
                raise ParamsError(f"{source}: {where}.{stage}: {method} cannot quantize the {role}'s "
                                  f"detector ({family.name}): {reason}")
            missing = get_method(stage, method).unavailable() if stage == "peer" else None
            if missing:
                raise ParamsError(f"{source}: {where}.peer: {method} cannot run here: {missing}")


def load_params(path: str | Path = "params.yaml", check_backbones: bool = False) -> dict:
    """A params file (the base study or an overlay on it), merged and validated."""
    raw, lines = _read_checked(path)
    return validate_params(raw, source=str(path), check_backbones=check_backbones, lines=lines)


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
