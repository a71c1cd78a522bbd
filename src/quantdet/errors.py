"""Errors a user can act on: each names the file or params key and what is wrong."""


class QuantdetError(Exception):
    """Base class; the CLI prints these without a traceback and exits with status 2."""


class ParamsError(QuantdetError):
    """An invalid value in params.yaml (the message names the key)."""


class DataError(QuantdetError):
    """A malformed dataset: annotation file, image, or category (the message names the file and entry)."""
