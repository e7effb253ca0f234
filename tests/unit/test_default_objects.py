"""The default VLM's object pipeline: clip-art labels, identities, colour names, split by object."""

from __future__ import annotations

import pytest
from PIL import Image
from test_evaluate_wordnet import TINY

from fixtures.wordnet_files import SynsetSpec, write_wordnet
from tl_latentlens.default.objects import (
    LabelledObject,
    clipart_caption,
    clipart_label,
    colour_name,
    identity_of,
    load_clipart,
    side_of,
    split_objects,
)
from tl_latentlens.wordnet import WordNet

S = SynsetSpec
EXTRA = [
    S("artifact", "n", ("artifact",), (("@", "whole"),)),
    S("vessel", "n", ("vessel",), (("@", "artifact"),)),
    S("container", "n", ("container",), (("@", "vessel"),)),
    S("cup", "n", ("cup",), (("@", "container"),)),
    S("rex", "n", ("rex",), (("@i", "dog"),)),  # a proper name: an instance of dog
    S("plain", "a", ("fancy",)),
    S("plain2", "a", ("fancy",)),
    S("fancyn", "n", ("fancy",), (("@", "animal"),)),  # mostly an adjective
]


@pytest.fixture(scope="module")
def wn(tmp_path_factory):
    return WordNet(write_wordnet(tmp_path_factory.mktemp("wn"), TINY + EXTRA))


@pytest.mark.parametrize(
    ("stem", "category", "label"),
    [
        ("dog_karl_bartel_01", "animals/mammals", "dog"),  # author suffix dropped
        ("2_dead_dogs_lumen_01", "animals", "dog"),  # plural -> morphy base, digits dropped
        ("flag_dog_ann_01", "animals", "dog"),  # "flag" is not an animal: next word
        ("dining-table_bob_01", "unsorted", None),  # no physical_object.n.01 in this WordNet
        ("cup_of_tea_ann", "containers/kitchen", "cup"),
        ("dog01", "shapes", None),  # folder without namable objects
        ("rex_01", "animals", None),  # proper name (instance), not the object's name
        ("fancy_01", "animals", None),  # mainly an adjective
        ("zzz_qqq", "animals", None),
    ],
)
def test_clipart_labels(wn, stem, category, label):
    assert clipart_label(stem, category, wn) == label


def test_identity_joins_synonyms(wn):
    assert identity_of("dog", wn) == identity_of("domestic_dog", wn) == "dog.n.01"
    assert identity_of("dog.n.02", wn) == "frump.n.01"
    with pytest.raises(ValueError):
        identity_of("zzz", wn)


def test_colour_names_and_captions():
    assert colour_name(Image.new("RGBA", (8, 8), (200, 20, 20, 255))) == "red"
    assert colour_name(Image.new("RGBA", (8, 8), (250, 250, 250, 255))) == "white"
    assert colour_name(Image.new("RGBA", (8, 8), (10, 10, 10, 255))) == "black"
    half = Image.new("RGBA", (8, 8), (20, 20, 220, 255))
    half.paste((20, 200, 20, 255), (0, 0, 4, 8))
    assert colour_name(half, dominance=0.6) is None  # no colour covers 60 %
    assert colour_name(Image.new("RGBA", (8, 8), (0, 0, 0, 0))) is None  # nothing opaque
    assert clipart_caption("apple", "red") == "A red apple."
    assert clipart_caption("owl", None) == "An owl."
    assert clipart_caption("letter.n.02", "orange") == "An orange letter."


def _obj(name, identity):
    return LabelledObject(
        path=__import__("pathlib").Path(f"/x/{name}.png"),
        name=name,
        category="animals",
        caption=f"A {name}.",
        label=name,
        identity=identity,
        source="openclipart",
    )


def test_split_is_by_identity_order_free_and_stable():
    objs = [_obj(f"o{i}_{j}", f"thing{i}.n.01") for i in range(200) for j in range(3)]
    parts = split_objects(objs)
    ids = [{o.identity for o in part} for part in (parts.train, parts.validation, parts.test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert sum(len(p) for p in (parts.train, parts.validation, parts.test)) == len(objs)
    assert 0 < len(ids[2]) < 50 and 0 < len(ids[1]) < 50  # ~10 % each of 200 identities
    assert split_objects(list(reversed(objs))) == parts  # input order does not matter
    more = split_objects(objs + [_obj("new", "new.n.01")])
    assert set(parts.test) <= set(more.test)  # adding objects moves nobody
    assert side_of("thing3.n.01") == side_of("thing3.n.01")
    with pytest.raises(ValueError):
        side_of("x", validation=0.6, test=0.5)


def test_load_clipart_caps_identities_and_skips_opaque(tmp_path, wn):
    folder = tmp_path / "animals"
    folder.mkdir()
    for i in range(4):
        Image.new("RGBA", (64, 64), (200, 20, 20, 255)).save(folder / f"dog_{i}_ann_01.png")
    Image.new("RGB", (64, 64), (200, 20, 20)).save(folder / "cat_rgb_01.png")  # no alpha
    Image.new("RGBA", (8, 8), (200, 20, 20, 255)).save(folder / "cat_small_01.png")  # tiny
    Image.new("RGBA", (64, 64), (20, 20, 200, 255)).save(folder / "puppy_01.png")
    objs = load_clipart(tmp_path, wn, per_identity=2)
    assert [(o.label, o.identity) for o in objs] == [
        ("dog", "dog.n.01"),
        ("dog", "dog.n.01"),
        ("puppy", "puppy.n.01"),
    ]
    assert objs[0].caption == "A red dog." and objs[-1].caption == "A blue puppy."
    assert objs[0].category == "animals" and objs[0].image().mode == "RGBA"
