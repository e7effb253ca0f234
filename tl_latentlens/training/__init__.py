"""Connector training: captioning with the language model and the vision encoder frozen.

The embedded default's connector (:mod:`tl_latentlens.default`) is trained here
(``tl-latentlens train-connector``): captioning data and loss (:mod:`.captioning`), the
training loop with resumable checkpoints (:mod:`.train`), the end-to-end pipeline that
exports a connector VLM (:mod:`.pipeline`) and its grounding check (:mod:`.check`).

Example:
    >>> from tl_latentlens.training import check_grounding
    >>> check_grounding(weights_dir)["loss"]
"""

from tl_latentlens.training.check import check_grounding
from tl_latentlens.training.train import TrainConfig, train_connector

__all__ = ["TrainConfig", "check_grounding", "train_connector"]
