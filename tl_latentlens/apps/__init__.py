"""Applications above the library: the ``tl-latentlens`` command line, one module per
sub-command (``explain``, ``build-bank``, ``evaluate``, ``demo``, ``train-connector``)."""

from tl_latentlens.apps.cli import build_parser, main

__all__ = ["build_parser", "main"]
