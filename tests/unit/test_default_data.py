"""Unit tests of the default VLM's data: stamps, split, composites, WordNet parsing, assets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures.wordnet_files import SynsetSpec, write_wordnet
from tl_latentlens.default import assets
from tl_latentlens.default.corpus import wordnet_sentences
from tl_latentlens.default.data import (
    BACKGROUND_LABEL,
    load_stamps,
    make_composite,
    patch_labels,
    split_stamps,
    stamp_captions,
)
from tl_latentlens.default.encoder import to_rgb

COLOURS = [(255, 0, 0), (0, 0, 255), (255, 0, 255), (0, 255, 255)]


def _fake_stamps(root, n=8, size=(60, 40)):
    """Opaque rectangles of a unique colour each (+ a mirror and an uncaptioned file)."""
    for i in range(n):
        folder = root / ("animals" if i % 2 else "food/fruit")
        folder.mkdir(parents=True, exist_ok=True)
        rgba = Image.new("RGBA", size, (*COLOURS[i % len(COLOURS)], 255))
        rgba.save(folder / f"{i:03d}thing_{i}.png")
        (folder / f"{i:03d}thing_{i}.txt").write_text(f"A thing number {i}\nfr.utf8=Une chose.\n")
    Image.new("RGBA", size).save(root / "animals" / "001thing_1_mirror.png")
    Image.new("RGBA", size).save(root / "animals" / "nocaption.png")
    return root


def test_load_stamps_reads_captions_and_skips_mirrors(tmp_path):
    stamps = load_stamps(_fake_stamps(tmp_path))
    assert len(stamps) == 8
    assert {s.caption for s in stamps} == {f"A thing number {i}" for i in range(8)}
    s0 = next(s for s in stamps if s.caption.endswith(" 0"))
    assert s0.name == "thing 0" and s0.category == "food/fruit"
    assert s0.image().mode == "RGBA"
    assert len(stamp_captions(stamps + stamps)) == 8


def test_split_is_seeded_disjoint_and_order_free(tmp_path):
    stamps = load_stamps(_fake_stamps(tmp_path, n=20))
    train, held = split_stamps(stamps, held_out=0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert not {s.path for s in train} & {s.path for s in held}
    train2, held2 = split_stamps(list(reversed(stamps)), held_out=0.25, seed=3)
    assert [s.path for s in held] == [s.path for s in held2]
    assert [s.path for s in held] != [s.path for s in split_stamps(stamps, 0.25, seed=4)[1]]
    with pytest.raises(ValueError):
        split_stamps(stamps, held_out=1.5)


def test_patch_labels_majority_with_background():
    lm = np.full((14, 14), BACKGROUND_LABEL)
    lm[0:2, 0:2] = 0  # patch (0,0) fully object 0
    lm[2:4, 0:1] = 1  # patch (1,0) half object 1: tie with background -> background (smaller)
    lm[2:4, 2:4] = 1
    lm[2, 3] = 2  # patch (1,1): 3 pixels of 1, 1 of 2
    out = patch_labels(lm, (7, 7))
    assert out.shape == (7, 7)
    assert out[0, 0] == 0 and out[1, 0] == BACKGROUND_LABEL and out[1, 1] == 1
    assert (out[2:, :] == BACKGROUND_LABEL).all()
    with pytest.raises(ValueError):
        patch_labels(lm, (5, 5))


def test_composite_labels_match_pasted_pixels(tmp_path):
    stamps = load_stamps(_fake_stamps(tmp_path, n=4))
    for seed in range(5):
        comp = make_composite(stamps, np.random.default_rng(seed), (2, 3), photo_p=0.0)
        assert comp.image.size == (224, 224) and comp.labels.shape == (7, 7)
        px = np.asarray(comp.image).astype(int)
        truth = np.full((224, 224), BACKGROUND_LABEL)
        for k, st in enumerate(comp.stamps):
            colour = COLOURS[int(st.caption.split()[-1]) % len(COLOURS)]
            truth[(px == colour).all(-1)] = k
        np.testing.assert_array_equal(comp.labels, patch_labels(truth, (7, 7)))
        visible = {int(v) for v in np.unique(truth) if v != BACKGROUND_LABEL}
        for k in visible:
            assert comp.stamps[k].caption in comp.caption
        assert comp.caption.endswith(f"The background is {comp.background}.")


def test_composite_is_a_function_of_the_rng(tmp_path):
    stamps = load_stamps(_fake_stamps(tmp_path, n=6))
    a = make_composite(stamps, np.random.default_rng(7), photo_p=0.0)
    b = make_composite(stamps, np.random.default_rng(7), photo_p=0.0)
    assert a.caption == b.caption
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    with pytest.raises(ValueError):
        make_composite(stamps, np.random.default_rng(0), (3, 2))


def test_wordnet_sentences(tmp_path):
    root = write_wordnet(
        tmp_path,
        [
            SynsetSpec(
                "dog",
                "n",
                ("dog", "domestic_dog"),
                gloss='a member of the genus Canis; "the dog barked all night"; '
                'kept as a pet; "a good dog"; ""',
            ),
            SynsetSpec("red", "a", ("red",), gloss="of the colour red"),
        ],
    )
    out = list(wordnet_sentences(root))
    assert out == [
        "dog: a member of the genus Canis; kept as a pet.",
        "the dog barked all night.",
        "a good dog.",
        "red: of the colour red.",
    ]
    assert list(wordnet_sentences(root, glosses=False))[0] == "the dog barked all night."


def test_to_rgb_composites_alpha():
    im = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 255))
    out = np.asarray(to_rgb(im, (0, 255, 0)))
    assert tuple(out[0, 0]) == (0, 255, 0) and tuple(out[0, 1]) == (255, 0, 0)


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert assets.package_dir("numpy") is not None
    assert assets.package_dir("surely_not_a_module_xyz") is None


def test_composite_samples_carry_each_objects_patches(tmp_path, monkeypatch):
    from tl_latentlens.default import data as data_mod
    from tl_latentlens.default.features import SampleSpec, build_samples, composite_regions

    # plain backgrounds only: no photo files needed for a unit test
    plain = data_mod._background
    monkeypatch.setattr(data_mod, "_background", lambda rng, size, p: plain(rng, size, 0.0))
    stamps = load_stamps(_fake_stamps(tmp_path))
    samples = build_samples(stamps, SampleSpec(views_per_stamp=1, n_composites=6), seed=3)
    comps = [s for s in samples if s.kind == "composite"]
    assert len(comps) == 6 and all(not s.regions for s in samples if s.kind != "composite")
    for seed in range(6):
        comp = make_composite(stamps, np.random.default_rng(seed), (2, 3), photo_p=0.0)
        regions = composite_regions(comp)
        flat = comp.labels.reshape(-1)
        covered = {k for k in flat.tolist() if k != BACKGROUND_LABEL}
        assert len(regions) == len(covered)
        for caption, cells in regions:
            k = next(i for i, st in enumerate(comp.stamps) if st.caption == caption)
            assert cells == tuple(np.flatnonzero(flat == k).tolist())
    # the samples' regions are those of the composites build_samples draws
    assert all(cells for s in comps for _, cells in s.regions)
