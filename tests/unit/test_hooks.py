import pytest

from tl_latentlens import hooks as hk


def test_layer_convention_round_trip():
    n = 30
    for layer in range(n + 1):
        assert hk.layer_of(hk.hook_for_layer(layer, n)) == layer
    assert hk.hook_for_layer(0, n) == "blocks.0.hook_resid_pre"
    assert hk.hook_for_layer(n, n) == "blocks.29.hook_resid_post"
    # resid_pre of block l and resid_post of block l-1 are the same layer
    assert hk.layer_of("blocks.5.hook_resid_pre") == hk.layer_of("blocks.4.hook_resid_post") == 5
    assert hk.layer_of("blocks.5.hook_resid_mid") == 5.5
    # resid_mid layers round-trip instead of being truncated to the block below
    assert hk.hook_for_layer(5.5, n) == "blocks.5.hook_resid_mid"
    assert hk.layer_of(hk.hook_for_layer(2.5, n)) == 2.5
    with pytest.raises(ValueError, match="l \\+ 0.5"):
        hk.hook_for_layer(2.25, n)


def test_paper_layers_for_32_layers_match_the_paper():
    # The paper's layers for 32-block models: 0,1,2,4,8,16,24,L-2,L-1 (+ final residual here).
    assert hk.paper_layers(32) == [0, 1, 2, 4, 8, 16, 24, 30, 31, 32]
    assert hk.paper_layers(3) == [0, 1, 2, 3]


def test_unknown_hook_lists_valid_names():
    with pytest.raises(hk.UnknownHookError, match="blocks.0.hook_resid_pre"):
        hk.validate_hooks(["blocks.7.hook_resid_post"], n_layers=3)
    with pytest.raises(hk.UnknownHookError, match="not a residual-stream hook"):
        hk.parse_hook("blocks.0.attn.hook_z")


def test_stop_layer():
    assert hk.stop_layer_for(["blocks.0.hook_resid_pre"], 3) == 1
    assert hk.stop_layer_for(["blocks.0.hook_resid_post"], 3) == 1
    assert hk.stop_layer_for(["blocks.1.hook_resid_pre"], 3) == 2
    assert hk.stop_layer_for(["blocks.2.hook_resid_post"], 3) is None
