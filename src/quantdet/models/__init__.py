"""Model files (quantdet.models.io): an FP32 or quantized network saved with the detector config
that rebuilds it. The networks themselves are the detector families' (quantdet.detectors)."""
