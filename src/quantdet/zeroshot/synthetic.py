"""Generated sets on disk: a split folder like the prepared ones (annotations.json with the
images and no boxes, images/ as PNG), so calibration reads them with the same dataset code,
and a grid image of real and generated images side by side for the report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from quantdet.data.split import IMAGES, write_annotations

GRID_COLUMNS = 8
LABEL_WIDTH = 72


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W in [0, 1] -> N×H×W×3 uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_generated_split(out_dir, images: torch.Tensor, classes: dict, labels: torch.Tensor | None = None,
                          info: dict | None = None) -> None:
    """Write images as PNG and a COCO index; `labels` (class indices a conditional generator was
    asked for) are kept per image as `generated_category_id`, not as boxes."""
    out_dir = Path(out_dir)
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, pixels in enumerate(to_uint8(images)):
        file_name = f"{i:05d}.png"
        Image.fromarray(pixels).save(out_dir / IMAGES / file_name)
        entry = {"id": i + 1, "file_name": file_name, "width": pixels.shape[1], "height": pixels.shape[0]}
        if labels is not None:
            entry["generated_category_id"] = int(classes["category_ids"][int(labels[i])])
        entries.append(entry)
    categories = [{"id": int(c), "name": n} for c, n in zip(classes["category_ids"], classes["names"])]
    write_annotations(out_dir, {"info": info or {}, "images": entries, "annotations": [],
                                "categories": categories})


def image_grid(rows: list[tuple[str, np.ndarray]], size: int) -> Image.Image:
    """One labelled row per (label, N×H×W×3 uint8 images), GRID_COLUMNS images per row."""
    grid = Image.new("RGB", (LABEL_WIDTH + GRID_COLUMNS * size, len(rows) * size), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * size + size // 2 - 6), label, fill="black")
        for c, pixels in enumerate(images[:GRID_COLUMNS]):
            tile = Image.fromarray(pixels)
            if tile.size != (size, size):
                tile = tile.resize((size, size), Image.Resampling.BILINEAR)
            grid.paste(tile, (LABEL_WIDTH + c * size, r * size))
    return grid
