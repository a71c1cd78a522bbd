"""quantdet: studies of quantized object detectors under input degradations."""
__version__ = "0.1.0"
