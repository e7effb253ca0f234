"""Where in their sentences LatentLens's top-1 text tokens sit, against the bank's base rate.

Reads a study's ``judgements.jsonl`` (``apps.connector_study --out DIR``) and its bank; prints,
per layer, the share of top-1 neighbours at each token position (0 = ``<|im_start|>``, 1 = the
first word, 6 = 6 or later) next to the share of bank entries at that position.

Usage::

    python docs/default_connector_runs/position_diagnostic.py STUDY_DIR BANK_DIR
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np

from tl_latentlens.bank import Bank


def main(study: str, bank_dir: str) -> None:
    bank = Bank.open(bank_dir)
    entries = np.load(Path(bank_dir) / "entries.npy", allow_pickle=False)
    cap = 6

    def shares(counts: collections.Counter) -> dict[int, float]:
        n = sum(counts.values())
        return {k: round(100 * v / n, 1) for k, v in sorted(counts.items())}

    base = collections.Counter(np.minimum(entries["position"], cap).tolist())
    print("bank entries by position (%):", shares(base))
    # (sentence text, token string) -> its positions in the bank's sentences
    where: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for sid in np.unique(entries["sentence_id"]).tolist():
        text = bank.sentence(sid)
        for pos, tok in enumerate(bank.sentence_tokens(sid)):
            where[(text, tok)].append(pos)
    by_layer: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in (Path(study) / "judgements.jsonl").read_text().splitlines():
        j = json.loads(line)
        if j["lens"] != "latent" or not j["candidates"]:
            continue
        top = j["candidates"][0]
        got = where.get((top["sentence"], top["token"]))
        by_layer[j["layer"]][min(got[0], cap) if got else -1] += 1
    for layer, counts in sorted(by_layer.items()):
        print(f"layer {layer}: top-1 by position (%):", shares(counts))


if __name__ == "__main__":
    main(*sys.argv[1:3])
