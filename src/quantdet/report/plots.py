"""The report's figures. A quantized model and its onnxruntime export share a colour
(deployed is dashed or hatched), so simulated-vs-deployed pairs read at a glance."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # report jobs run headless, on cluster nodes too
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from quantdet.report.files import atomic_write  # noqa: E402
from quantdet.study import parse_model_name  # noqa: E402


def model_colours(models: list[str]) -> dict[str, tuple]:
    bases = list(dict.fromkeys(parse_model_name(m).model for m in models))
    palette = plt.get_cmap("tab10").colors if len(bases) <= 10 else (
        plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors + plt.get_cmap("tab20c").colors)
    return {m: palette[bases.index(parse_model_name(m).model) % len(palette)] for m in models}


def _deployed(model: str) -> bool:
    return parse_model_name(model).runtime in ("onnxruntime", "openvino")


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


MAX_SERIES = 8  # per panel: more lines than this cannot be told apart


def primary_models(models: list[str]) -> list[str]:
    """The study seed's FP32 models and its quantized ones in the runtime the study analyses:
    simulated (PyTorch) where evaluated, else deployed (onnxruntime, the peers among them)."""
    names = {m: parse_model_name(m) for m in models}
    runtime = "torch" if any(n.quantized and n.runtime == "torch" for n in names.values()) else "onnxruntime"
    return [m for m in models if names[m].seed is None and not names[m].precision
            and names[m].compared_as == (runtime if names[m].quantized else "torch")]


def severity_panels(models: list[str]) -> list[tuple[str, list[str]]]:
    """(title, models) per panel: per bit width, the FP32 student and at most MAX_SERIES - 1
    quantized students of the study seed in the analysed runtime (`primary_models`; deployed
    twins and repeat seeds are compared in their own tables, with intervals)."""
    names = {m: parse_model_name(m) for m in models}
    torch_models = primary_models(models)
    reference = [m for m in torch_models if not names[m].quantized and names[m].role == "student"
                 and names[m].seed is None][:1]
    widths = list(dict.fromkeys(names[m].bits_label for m in torch_models if names[m].quantized))
    panels = []
    for width in widths:
        members = [m for m in torch_models if names[m].bits_label == width]
        step = MAX_SERIES - len(reference)
        chunks = [members[i:i + step] for i in range(0, len(members), step)]
        for k, chunk in enumerate(chunks):
            part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            panels.append((f"{width}{part}", reference + chunk))
    return panels or [("fp32", [m for m in torch_models if not names[m].quantized][:MAX_SERIES])]


def plot_ap_vs_severity(curves: pd.DataFrame, path: Path, intervals: dict | None = None) -> Path:
    """One panel per bit width (the FP32 student in each, as the reference), at most
    MAX_SERIES lines each, with their 95% interval bands where measured."""
    models = list(curves["model"].unique())
    colours = model_colours(models)
    panels = severity_panels(models)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 4.2 * len(panels)), squeeze=False,
                             layout="constrained")
    figures = (intervals or {}).get("models", {})
    for ax, (title, shown) in zip(axes[:, 0], panels):
        for model in shown:
            curve = curves[curves["model"] == model]
            ax.plot(curve["severity"], 100 * curve["AP"], marker="o", color=colours[model], label=model,
                    linewidth=2.2 if not parse_model_name(model).quantized else 1.5)
            band = _severity_band(figures.get(model), list(curve["severity"]))
            if band is not None:
                ax.fill_between(curve["severity"], band[0], band[1], color=colours[model], alpha=0.12,
                                linewidth=0)
        ax.set_xticks(sorted(curves["severity"].unique()))
        ax.set_xlabel("corruption severity (0 = clean)")
        ax.set_ylabel("AP@[.5:.95] (points)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, title="model")
        ax.set_title(f"Mean AP over corruptions vs severity: {title}"
                     + ("; bands: 95% intervals" if figures else ""))
    return _save(fig, path)


def _severity_band(figures: dict | None, severities: list[int]):
    """Low and high ends (points) at each severity: P's interval at 0, then each severity's."""
    if not figures:
        return None
    values = []
    for s in severities:
        v = figures.get("P") if s == 0 else figures.get("severities", {}).get(str(s))
        if not v or v.get("low") is None:
            return None
        values.append((100 * v["low"], 100 * v["high"]))
    return [lo for lo, _ in values], [hi for _, hi in values]


def _error(frame: pd.DataFrame, column: str, scale: float = 100.0):
    """matplotlib's (2, n) error lengths from the interval columns, or None without them."""
    if f"{column}_low" not in frame:
        return None
    value = scale * frame[column].astype(float)
    low = (value - scale * frame[f"{column}_low"].astype(float)).clip(lower=0).fillna(0)
    high = (scale * frame[f"{column}_high"].astype(float) - value).clip(lower=0).fillna(0)
    return [list(low), list(high)]


def plot_rpc_per_model(robustness: pd.DataFrame, path: Path) -> Path:
    # horizontal bars: the long model names stay readable on the y axis; whiskers: 95% interval
    models = list(robustness["model"])
    colours = model_colours(models)
    rpc = 100 * robustness["rPC"].astype(float)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(models) + 1.5))
    bars = ax.barh(range(len(models)), rpc.fillna(0), color=[colours[m] for m in models],
                   edgecolor="black", linewidth=0.5, xerr=_error(robustness, "rPC"),
                   error_kw={"elinewidth": 0.8, "capsize": 2})
    for bar, model in zip(bars, models):
        if _deployed(model):
            bar.set_hatch("//")
    for y, value in enumerate(rpc):
        ax.text((0 if pd.isna(value) else value) + 0.5, y, "n/a" if pd.isna(value) else f"{value:.1f}%",
                va="center", fontsize=9)
    ax.set_yticks(range(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel("rPC = mPC / P (%)")
    top = rpc.max(skipna=True)
    ax.set_xlim(0, max(100.0, 0.0 if pd.isna(top) else top + 10))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Relative performance under corruption (hatched: onnxruntime"
                 + ("; whiskers: 95% interval)" if "rPC_low" in robustness else ")"))
    return _save(fig, path)


def plot_accuracy_vs_robustness(robustness: pd.DataFrame, path: Path) -> Path:
    """P against mPC per model with their 95% intervals, one panel per bit width (the FP32
    models in each as the reference): the accuracy-robustness trade-off at a glance."""
    rows = robustness[robustness["model"].isin(primary_models(list(robustness["model"])))]
    bits = {m: parse_model_name(m).bits_label for m in rows["model"]}
    widths = [b for b in dict.fromkeys(bits.values()) if b != "fp32"] or ["fp32"]
    colours = model_colours(list(rows["model"]))
    fig, axes = plt.subplots(1, len(widths), figsize=(6.5 * len(widths), 5.5), squeeze=False)
    for ax, width in zip(axes[0], widths):
        panel = rows[[bits[m] in ("fp32", width) for m in rows["model"]]]
        for i, r in enumerate(panel.itertuples()):
            one = panel.iloc[[i]]
            ax.errorbar(100 * r.P, 100 * r.mPC, xerr=_error(one, "P"), yerr=_error(one, "mPC"),
                        fmt="s" if bits[r.model] == "fp32" else "o", color=colours[r.model], capsize=2,
                        elinewidth=0.8, label=r.model)
        ax.set_xlabel("P: AP@[.5:.95] on clean images (points)")
        ax.set_ylabel("mPC: mean AP under corruption (points)")
        ax.grid(alpha=0.3)
        ax.set_title(f"Accuracy and robustness: {width}" + (" (FP32: squares)" if width != "fp32" else ""))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    return _save(fig, path)


def plot_detectors_accuracy_vs_robustness(rows: pd.DataFrame, path: Path) -> Path:
    """P against mPC with their 95% intervals, one panel per detector of the study (the rows of
    results/tables/detectors.csv: each detector's FP32 model and its quantized models), the
    FP32 model as a square, W8A8 as circles, W4A4 as triangles, a colour per method."""
    def method(r):
        return f"{r.stage} {r.method}" if r.bits != "fp32" else "fp32"

    detectors = list(dict.fromkeys(rows["detector"]))
    methods = list(dict.fromkeys(method(r) for r in rows.itertuples()))
    palette = plt.get_cmap("tab10").colors if len(methods) <= 10 else plt.get_cmap("tab20").colors
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    markers = {"fp32": "s", "W8A8": "o", "W4A4": "^"}   # bits as quantdet.study's bits_label writes them
    columns = min(len(detectors), 3)
    lines = -(-len(detectors) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.5 * columns, 4.8 * lines), squeeze=False)
    for ax, detector in zip(axes.flat, detectors):
        panel = rows[rows["detector"] == detector]
        for i, r in enumerate(panel.itertuples()):
            one = panel.iloc[[i]]
            ax.errorbar(100 * r.P, 100 * r.mPC, xerr=_error(one, "P"), yerr=_error(one, "mPC"),
                        fmt=markers.get(r.bits, "D"), color=colours[method(r)], capsize=2, elinewidth=0.8,
                        label=f"{method(r)} {r.bits}" if r.bits != "fp32" else "fp32")
        ax.set_title(f"{detector}")
        ax.set_xlabel("P: AP@[.5:.95] on clean images (points)")
        ax.set_ylabel("mPC (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))   # below: never over a point
    for ax in list(axes.flat)[len(detectors):]:
        ax.set_visible(False)
    fig.suptitle("Each detector: accuracy and robustness of its models (square: FP32; circle: W8A8; "
                 "triangle: W4A4; 95% intervals)", fontsize=10)
    return _save(fig, path)


def plot_ap_per_corruption(per_condition: pd.DataFrame, path: Path) -> Path:
    models = list(per_condition["model"].unique())
    conditions = list(per_condition["condition"].unique())
    colours = model_colours(models)
    table = per_condition.pivot(index="condition", columns="model", values="AP").reindex(conditions)[models]
    width = 0.8 / len(models)
    # wide enough for the bars, capped so the figure still reads when embedded in report.md
    fig, ax = plt.subplots(figsize=(min(15, max(8, 0.12 * len(conditions) * len(models) + 3)), 5.5))
    for i, model in enumerate(models):
        x = [c + (i - (len(models) - 1) / 2) * width for c in range(len(conditions))]
        ax.bar(x, 100 * table[model], width, color=colours[model], label=model,
               hatch="//" if _deployed(model) else None, edgecolor="black", linewidth=0.3)
    ax.set_xticks(range(len(conditions)), [c.replace("_", " ") for c in conditions], rotation=35, ha="right")
    if "clean" in conditions:   # clean is the reference, not one of the corruptions
        ax.axvline(conditions.index("clean") + 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(-0.5, len(conditions) - 0.5)
    ax.set_ylabel("AP@[.5:.95] (points), mean over severities")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=min(3, len(models)), fontsize=9)
    ax.set_title("Accuracy per corruption")
    return _save(fig, path)
