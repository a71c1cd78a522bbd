"""How an image becomes a square network input (letterboxing): without torch, so that a
detector family's class can name its own at import (listing the families stays light)."""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """How an image becomes a square network input: scaled to fit S, then padded.

    The default (quantdet's own detector) pads right and bottom with black, resized by PIL's
    bilinear filter. A detector family trained elsewhere sees its own: Ultralytics' (the `yolo`
    family) resizes the long side to S with OpenCV's bilinear interpolation, each side rounded
    up, and centres the image on grey (114), so a checkpoint `yolo train` made scores here as it
    does in Ultralytics' validator. A box maps back by (box - offset) / scale."""
    centre: bool = False
    pad: int = 0
    ceil: bool = False      # resized sides rounded up (min(ceil(w * r), S)) rather than to nearest
    resample: str = "pil"   # pil: PIL bilinear (antialiased); cv2: OpenCV INTER_LINEAR
    clip: bool = False      # detections mapped back are clipped to the image (Ultralytics' scale_boxes)

    def sizes(self, width: int, height: int, scale: float) -> tuple[int, int]:
        if self.ceil:
            return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
        return max(1, round(width * scale)), max(1, round(height * scale))

    def resize(self, image, size: tuple[int, int]) -> np.ndarray:
        if size == image.size:
            return np.asarray(image)
        if self.resample == "cv2":
            import cv2

            return cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR)
        return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


CORNER = Letterbox()
