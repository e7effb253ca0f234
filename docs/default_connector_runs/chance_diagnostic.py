"""The chance levels and image intervals of a study, as in docs/default_connector.md.

Prints, for a study directory (``apps.connector_study --out DIR``) and the bank it searched: the
constant answer under the strict rule and under the rule without hypernyms, LatentLens's strict
rate per layer against its shuffled-label rate, and the 95 % interval that resamples images.
``--words W ...`` scores a given constant answer instead of choosing one (validation's words on
test).

Usage::

    python docs/default_connector_runs/chance_diagnostic.py STUDY_DIR BANK_DIR [--words W ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_latentlens.bank import Bank
from tl_latentlens.evaluate import LabelMatcher, MatchRule, WordNet
from tl_latentlens.evaluate.chance import constant_answer, sentence_words, shuffled_label_rates
from tl_latentlens.evaluate.records import aggregate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("study")
    p.add_argument("bank")
    p.add_argument("--words", nargs="*", default=None, help="score these words as the answer")
    args = p.parse_args(argv)
    log = Path(args.study) / "judgements.jsonl"
    wn = WordNet.default()
    strict = LabelMatcher(wn, MatchRule.strict())
    no_hypernyms = LabelMatcher(wn, MatchRule(hypernym_min_depth=None))
    bank = Bank.open(args.bank)
    words = args.words or sentence_words(bank.sentence(i) for i in range(bank.n_sentences))
    for name, matcher in (("strict", strict), ("without hypernyms", no_hypernyms)):
        a = constant_answer(log, words, matcher, k=5)
        print(f"constant answer ({name}): {', '.join(a.words)} -> {a.rate:.1f} % of {a.n}")
    shuffled = shuffled_label_rates(log, strict, k=5)["latent"]
    table = aggregate(log, kinds=("concrete",))
    print("layer  strict %  shuffled %  95 % interval resampling images")
    for _, r in table.iterrows():
        layer = int(r["layer"])
        print(
            f"{layer:5d}  {r['latent_top5']:8.1f}  {shuffled.get(layer, float('nan')):10.1f}"
            f"  {r['latent_top5_img_lo']:.1f}-{r['latent_top5_img_hi']:.1f}"
        )


if __name__ == "__main__":
    main()
