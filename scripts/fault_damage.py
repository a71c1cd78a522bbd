"""The fault campaign's "damaged files" row: params files cut at arbitrary bytes, and flipped
bytes in the files a study writes and reads back (model, ONNX model, cached image).

Truncation: each params file is cut to every length shorter than it (or a seeded sample of
lengths, --sample) and read as every quantdet entry point reads it (quantdet.config:
check the text, parse, merge onto the base study, schema and consistency checks; the
Snakefile runs the same before Snakemake's own parse). The project's params.yaml is cut as the
base study (the base itself is cut); any other file as an overlay on the intact base. Each cut
is refused (by which check) or accepted; an accepted one is either the same study (only
comments or blank lines were lost) or a valid shorter study: the cut fell just after a line
break, and the lines left are a complete study (listed, with the keys that differ).

Flips (--flips N): N seeded single-byte flips in each kind of file, written by quantdet's own
writers into a temporary folder, and read back by its readers; each must be refused naming
the file.

    python scripts/fault_damage.py                     # every length of both files
    python scripts/fault_damage.py --sample 300 --flips 20
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "params.yaml", ROOT / "tests" / "smoke" / "params.yaml"]


def _check(path: Path, base: Path | None) -> tuple[str, str, dict | None]:
    """(verdict, reason, params): verdict refused/accepted."""
    from quantdet import config
    from quantdet.errors import ParamsError

    saved = config.BASE_PARAMS
    if base is not None:
        config.BASE_PARAMS = base
    try:
        params = config.load_params(path)
    except ParamsError as e:
        message = str(e)
        if "ends mid-line" in message:
            reason = "ends mid-line (no final line break)"
        elif "not valid YAML" in message:
            reason = "not valid YAML"
        elif "empty" in message.split("\n")[0]:
            reason = "empty"
        elif "not UTF-8" in message:
            reason = "not UTF-8"
        elif "expected a mapping" in message:
            reason = "not a mapping"
        elif "the base study sets every key" in message:
            reason = "base study missing keys (the schema's every key)"
        elif "cut short: line" in message:
            reason = "declared end marker missing"
        elif "invalid parameters" in message:
            reason = "schema (a key without its value, a missing section)"
        else:
            reason = "consistency check"
        named = str(path) in message and any(f"{path}:{n}" in message for n in range(1, 10000))
        if base is not None and not named:   # the base itself cut: it is what is named
            named = any(f"{base}:{n}" in message for n in range(1, 10000))
        return "refused", reason + ("" if named else " [NO FILE:LINE]"), None
    finally:
        config.BASE_PARAMS = saved
    return "accepted", "", params


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(dict.fromkeys([*a, *b])):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix]


def truncation_sweep(source: Path, sample: int | None, seed: int) -> dict:
    data = source.read_bytes()
    lengths = list(range(len(data)))
    if sample is not None and sample < len(lengths):
        lengths = sorted(random.Random(seed).sample(lengths, sample))
    as_base = source.resolve() == (ROOT / "params.yaml").resolve()
    counts: Counter = Counter()
    accepted = []
    with tempfile.TemporaryDirectory() as tmp:
        full_path = Path(tmp) / "full" / "params.yaml"
        full_path.parent.mkdir()
        full_path.write_bytes(data)
        full = _check(full_path, full_path if as_base else None)
        assert full[0] == "accepted", f"{source} itself is refused: {full[1]}"
        cut = Path(tmp) / "params.yaml"
        for length in lengths:
            cut.write_bytes(data[:length])
            verdict, reason, params = _check(cut, cut if as_base else None)
            if verdict == "refused":
                counts[f"refused: {reason}"] += 1
                continue
            diff = _differences(full[2], params)
            line = data[:length].count(b"\n")
            if not diff:
                counts["accepted: the same study (only comments/blank lines lost)"] += 1
            else:
                counts["accepted: a valid shorter study (cut just after a line break)"] += 1
                accepted.append((length, line, diff))
    shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
    return {"file": str(shown), "bytes": len(data), "tried": len(lengths),
            "as": "base study" if as_base else "overlay on the base", "counts": counts, "shorter": accepted}


# ------------------------------------------------------------------------------- flips
def _flip(path: Path, offset: int) -> None:
    """One byte changed in place, the modification time kept (silent damage)."""
    import os

    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def flip_sweep(flips: int, seed: int) -> list[dict]:
    """Each kind of file written by quantdet's writer, one byte flipped, read by its reader."""
    import numpy as np
    import torch

    from quantdet.corruptions.corrupted_split import corrupt_split
    from quantdet.data.dataset import DetectionDataset
    from quantdet.errors import QuantdetError
    from quantdet.export.onnx_export import export_onnx
    from quantdet.export.runner import OrtDetector
    from quantdet.models.io import load_model, save_model

    rng = random.Random(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        pt = tmp / "models" / "tiny.pt"
        onnx_file = tmp / "models" / "tiny.onnx"

        def make_pt():
            save_model(pt, model, kind="fp32", detector={"family": "none"}, classes={})
            return pt

        def read_pt(path):   # the checksum is checked before the payload is built into a model
            try:
                load_model(path)
            except QuantdetError:
                raise
            except Exception:   # a detector config that builds nothing: the file was read
                pass

        def make_onnx():
            export_onnx(model, onnx_file, 32, 17, output_names=["y"])
            return onnx_file

        def read_onnx(path):
            OrtDetector(path)(torch.zeros(1, 3, 32, 32))

        split = _tiny_split(tmp / "prepared" / "val")
        corrupted = tmp / "corrupted" / "gaussian_noise" / "1"

        def make_image():
            corrupt_split(split, "gaussian_noise", 1, 0, corrupted)
            return sorted((corrupted / "images").iterdir())[0]

        def read_image(path):
            dataset = DetectionDataset(corrupted, 32)
            for i in range(len(dataset)):
                dataset[i]

        for kind, make, read in (("model .pt", make_pt, read_pt), ("ONNX model", make_onnx, read_onnx),
                                 ("cached corrupted image", make_image, read_image)):
            counts = Counter()
            path = make()
            read(path)   # intact: accepted
            size = path.stat().st_size
            for _ in range(flips):
                path = make()
                _flip(path, rng.randrange(size))
                try:
                    read(path)
                    counts["accepted (used silently)"] += 1
                except QuantdetError as e:
                    counts["refused naming the file" if str(path) in str(e) else "refused, file not named"] += 1
                except Exception as e:   # noqa: BLE001 - a reader's own error: not ours
                    counts[f"failed: {type(e).__name__}" + (" naming the file" if str(path) in str(e) else "")] += 1
            rows.append({"kind": kind, "bytes": size, "tried": flips, "counts": counts})
    return rows


def _tiny_split(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    from quantdet.data.split import write_annotations

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 40})
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                    "iscrowd": 0} for i in range(3)]
    write_annotations(folder, {"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "thing"}]})
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=FILES)
    parser.add_argument("--sample", type=int, default=None, help="a seeded sample of cut lengths (default: every one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flips", type=int, default=0, help="flipped bytes per kind of file (default: none)")
    parser.add_argument("--list", action="store_true", help="list every accepted shorter study")
    parser.add_argument("--json", action="store_true",
                        help="end with one line of JSON: trials, refused, accepted (scripts/fault_campaign.py)")
    args = parser.parse_args(argv)
    total = Counter()
    import logging

    logging.disable(logging.WARNING)
    print("| params file | read as | bytes | cuts tried | outcome | count |")
    print("|---|---|---:|---:|---|---:|")
    for source in args.files:
        result = truncation_sweep(source.resolve(), args.sample, args.seed)
        marker = "with its end marker" if "ends with" in source.read_text() else "without an end marker"
        for outcome, count in result["counts"].items():
            total["trials"] += count
            if outcome.startswith("refused"):
                total["refused"] += count
            elif "same study" in outcome:
                total["accepted_same"] += count
            else:
                total[f"accepted shorter ({marker})"] += count
        for i, (outcome, count) in enumerate(sorted(result["counts"].items())):
            head = (f"| {result['file']} | {result['as']} | {result['bytes']} | {result['tried']} "
                    if i == 0 else "| | | | ")
            print(f"{head}| {outcome} | {count} |")
        shown = result["shorter"] if args.list else result["shorter"][:8]
        for length, line, diff in shown:
            print(f"  accepted: cut at byte {length} (after line {line}): differs in {', '.join(diff[:4])}"
                  + (" ..." if len(diff) > 4 else ""), file=sys.stderr)
        if len(shown) < len(result["shorter"]):
            print(f"  ... {len(result['shorter']) - len(shown)} more (--list)", file=sys.stderr)
    if args.flips:
        print("\n| file | bytes | flips tried | outcome | count |")
        print("|---|---:|---:|---|---:|")
        for row in flip_sweep(args.flips, args.seed):
            for outcome, count in row["counts"].items():
                total["trials"] += count
                total["refused" if outcome == "refused naming the file" else f"flip {outcome}"] += count
            for i, (outcome, count) in enumerate(sorted(row["counts"].items())):
                head = f"| {row['kind']} | {row['bytes']} | {row['tried']} " if i == 0 else "| | | "
                print(f"{head}| {outcome} | {count} |")
    if args.json:
        import json

        print(json.dumps(dict(total)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
