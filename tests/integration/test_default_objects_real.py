"""The object pipeline on the real Debian data: clip-art labels, identities, split by object."""

from __future__ import annotations

import pytest

from tl_latentlens.default.objects import clipart_label, identity_of, load_objects, split_objects
from tl_latentlens.wordnet import WordNet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wn():
    return WordNet.default()


@pytest.mark.parametrize(
    ("stem", "category", "label"),
    [
        ("light_bulb_karl_bartel_01", "electronics/bulb", "light bulb"),
        ("contour_baboon", "animals/mammals", "baboon"),
        ("2_dead_frogs_lumen_desig_01", "animals", "frog"),
        ("apple_bitten_dan_gerhard_01", "food", "apple"),
        ("canguro_architetto_franc_01", "animals/mammals", None),  # Italian: not a WordNet noun
        ("chef_jarno_vasamaa_", "food", None),  # a chef is no food
        ("arrow01_4", "shapes/arrows", None),  # shapes hold no namable objects
    ],
)
def test_real_clipart_labels(wn, stem, category, label):
    assert clipart_label(stem, category, wn) == label


def test_real_identities_and_split(wn):
    assert identity_of("automobile", wn) == identity_of("car", wn) == "car.n.01"
    parts = split_objects(load_objects())
    sides = [{o.identity for o in p} for p in (parts.train, parts.validation, parts.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(parts.train) > 1000 and len(parts.test) > 100 and len(parts.validation) > 100
    assert {o.source for o in parts.test} == {"tuxpaint", "openclipart"}


def test_heldout_composites_use_test_objects_only():
    from tl_latentlens.evaluate.default_set import heldout_composites

    test_labels = {o.label for o in split_objects(load_objects()).test}
    for im in heldout_composites(5):
        assert set(im.labels) <= test_labels and im.labels
