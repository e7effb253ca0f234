"""Applications above the library: the ``tl-latentlens`` command line, one module per
sub-command (``explain``, ``build-bank``, ``calibrate-bank``, ``evaluate``, ``demo``,
``train-connector``, ``fetch-data``)."""

from tl_latentlens.apps.cli import build_parser, main

__all__ = ["build_parser", "main"]
