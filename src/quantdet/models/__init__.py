"""Detectors: timm backbone + FPN + dense anchor-free head, their loss, and decoding."""
from quantdet.models.decode import decode_detections
from quantdet.models.detector import Detector, build_detector
from quantdet.models.loss import detection_loss

__all__ = ["Detector", "build_detector", "decode_detections", "detection_loss"]
