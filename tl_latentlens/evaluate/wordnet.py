"""Moved to :mod:`tl_latentlens.wordnet` (the data pipeline of the default VLM needs it too).

Kept so that ``from tl_latentlens.evaluate.wordnet import WordNet`` still works.
"""

from tl_latentlens.wordnet import POS, Pointer, Synset, WordNet, _default_wordnet, _parse_data_line

__all__ = ["POS", "Pointer", "Synset", "WordNet", "_default_wordnet", "_parse_data_line"]
