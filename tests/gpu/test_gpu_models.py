"""GPU tier: models, banks and lenses on CUDA give the CPU's answers.

* The embedded default VLM (``load_vlm("default", device="cuda")``) and tiny Hugging Face
  VLMs put the same visual-token residuals in the stream on CUDA as on the CPU; with no device
  given, the default loads on CUDA.
* A bank built on CUDA in bfloat16 stores nearly the vectors of a float32 build.
* ``LatentLens.explain`` on a CUDA model (its bank searched on the GPU) returns the CPU's
  neighbours, and LogitLens / EmbeddingLens return the CPU's top-k tokens.
* ``torchrun`` with two ranks on one GPU builds the bank a single process builds.

Tolerances. Both devices run float32 with TF32 off (the library's rule,
:func:`tl_latentlens.devices.full_float32`), so the two differ only by the order of summation:
a float32 product of length K rounds by about sqrt(K) * 2^-24 ~ 1e-6 relative; the default's
~20 encoder convolutions and 30 blocks amplify that, so a stream within 1e-4 (relative L2)
at layer 0 and 1e-3 at depth is sound. TF32 (10 mantissa bits) would put layer 0 about 1e-3
off, beyond the first bound. Scores are then compared place by place, and neighbours must be
the same except where the CPU's own scores are within the tolerance of one another
(:func:`gpu_helpers.same_ranking`).

Runs only where CUDA exists (``pytest -m gpu``); figures go to ``$TL_GPU_RECORD``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gpu_helpers import DEVICE, MISSING, corpus, picture, same_ranking

from tiny_models import WORDS, random_image, tiny_llava_dir, tiny_llava_next_dir, tiny_qwen2_vl_dir
from tl_latentlens import hooks as hk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(MISSING, reason="needs a CUDA device"),
]

#: Layers of the default (30 blocks) compared between devices: the paper's spread.
DEFAULT_LAYERS = [0, 1, 2, 4, 8, 16, 24, 28, 29, 30]
LAYER0_REL = 1e-4
DEEP_REL = 1e-3
MIN_COS = 0.9999


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def min_cosine(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(got.float(), ref.float(), dim=-1).min())


#: The device type the tier compares with the CPU ("cuda"; "cpu" in a dry run).
KIND = torch.device(DEVICE).type


def on_device(module: torch.nn.Module) -> bool:
    return all(p.device.type == KIND for p in module.parameters())


# ---- the embedded default VLM ---------------------------------------------------------------
def test_default_vlm_loads_on_device(default_cuda):
    assert default_cuda.device.type == KIND
    for part in ("bridge", "encoder", "connector"):
        assert on_device(getattr(default_cuda, part)), f"{part} has parameters off the GPU"


def test_default_loader_picks_cuda_when_no_device_is_given(default_cpu):
    """``load_vlm("default")`` with no device: CUDA when present, as every loader
    (:func:`tl_latentlens.devices.resolve_device`)."""
    from tl_latentlens.models.load import load_vlm

    if KIND != "cuda":
        pytest.skip("a dry run: no CUDA to pick")
    vlm = load_vlm("default")
    try:
        assert vlm.device.type == "cuda"
        for part in ("bridge", "encoder", "connector"):
            assert on_device(getattr(vlm, part)), f"{part} has parameters off the GPU"
    finally:
        del vlm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def test_default_visual_residuals_match_the_cpu(default_cpu, default_cuda, gpu_record):
    from tl_latentlens.capture import capture_image

    hooks = [hk.hook_for_layer(layer, default_cpu.n_layers) for layer in DEFAULT_LAYERS]
    img = picture()
    cpu = capture_image(default_cpu, img, hooks=hooks)
    gpu = capture_image(default_cuda, img, hooks=hooks)
    assert torch.equal(cpu.layout.positions, gpu.layout.positions)
    errors = {h: rel_error(gpu.residuals[h], cpu.residuals[h]) for h in hooks}
    cosines = {h: min_cosine(gpu.residuals[h], cpu.residuals[h]) for h in hooks}
    gpu_record("default_visual_residuals", rel_error=errors, min_cosine=cosines)
    assert gpu.residuals[hooks[0]].shape == (49, 576)
    assert errors[hooks[0]] <= LAYER0_REL, errors
    assert max(errors.values()) <= DEEP_REL, errors
    assert min(cosines.values()) >= MIN_COS, cosines


# ---- tiny Hugging Face VLMs -----------------------------------------------------------------
FAMILIES = {
    "llava": (tiny_llava_dir, "the <image>\nthe cat sits"),
    "llava_next": (tiny_llava_next_dir, "the <image>\nthe cat sits"),
    "qwen2_vl": (tiny_qwen2_vl_dir, "the <|vision_start|><|image_pad|><|vision_end|> the cat"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny_pair(request, tmp_path_factory):
    """(name, prompt, CPU VLM, CUDA VLM) of one tiny family, from one saved checkpoint."""
    from tl_latentlens.models.load import load_vlm

    name = request.param
    build, prompt = FAMILIES[name]
    path = build(tmp_path_factory.mktemp(f"tiny_{name}"))
    return name, prompt, load_vlm(path, device="cpu"), load_vlm(path, device=DEVICE)


def test_tiny_hf_vlm_residuals_match_the_cpu(tiny_pair, gpu_record):
    from tl_latentlens.capture import capture_image

    name, prompt, cpu_vlm, gpu_vlm = tiny_pair
    assert gpu_vlm.device.type == KIND and on_device(gpu_vlm.bridge)
    hooks = [hk.hook_for_layer(layer, cpu_vlm.n_layers) for layer in range(cpu_vlm.n_layers + 1)]
    img = random_image(3, 48).resize((48, 40))
    cpu = capture_image(cpu_vlm, img, prompt, hooks)
    gpu = capture_image(gpu_vlm, img, prompt, hooks)
    assert torch.equal(cpu.layout.positions, gpu.layout.positions)
    errors = {h: rel_error(gpu.residuals[h], cpu.residuals[h]) for h in hooks}
    gpu_record("tiny_hf_residuals", family=name, rel_error=errors)
    assert errors[hooks[0]] <= LAYER0_REL, errors
    assert max(errors.values()) <= DEEP_REL, errors


# ---- banks ----------------------------------------------------------------------------------
def test_bfloat16_bank_on_cuda_keeps_the_float32_vectors(
    default_cuda, default_cuda_bf16, tmp_path, gpu_record
):
    """A bfloat16 build (what ``fast_dtype("cuda")`` picks on a bfloat16 GPU) against a float32
    build on the same GPU: the same entries, and nearly the same vectors. bfloat16 keeps 8
    mantissa bits (~2e-3 relative per rounding). On a CPU the same comparison gave a mean cosine
    of 0.9997-0.99999 per layer and a 1 % quantile >= 0.998, the worst vectors (0.90-0.97 at
    layers 16-30) being the large-norm tokens at positions 1-2, right after BOS. So: the mean
    >= 0.999 and the 1 % quantile >= 0.99 per hook; the minimum is recorded, not bounded."""
    from tl_latentlens.bank import build_bank
    from tl_latentlens.devices import fast_dtype

    choice = fast_dtype(DEVICE)
    gpu_record("fast_dtype", dtype=choice.dtype_name, reason=choice.reason)
    if KIND == "cuda" and torch.cuda.is_bf16_supported():
        assert choice.dtype == torch.bfloat16
    hooks = [hk.hook_for_layer(layer, default_cuda.n_layers) for layer in (0, 4, 16, 29, 30)]
    text = corpus(96)
    opts = dict(batch_size=32, progress=False)
    b32 = build_bank(default_cuda, text, tmp_path / "f32", hooks, **opts)
    b16 = build_bank(default_cuda_bf16, text, tmp_path / "bf16", hooks, **opts)
    assert b32.manifest.build.forward_dtype == "float32"
    assert b16.manifest.build.forward_dtype == "bfloat16"
    assert np.array_equal(np.asarray(b32.entries), np.asarray(b16.entries))
    later = np.asarray(b32.entries)["position"] >= 3
    figures = {}
    for h in hooks:
        a, b = b32.entry_vectors(h), b16.entry_vectors(h)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        figures[h] = {
            "mean": float(cos.mean()),
            "q01": float(np.quantile(cos, 0.01)),
            "q001": float(np.quantile(cos, 0.001)),
            "min": float(cos.min()),
            "min_position_ge_3": float(cos[later].min()),
        }
    gpu_record("bank_bf16_vs_f32", cosine=figures, n_entries=int(b32.n_entries()))
    for h, f in figures.items():
        assert f["mean"] >= 0.999 and f["q01"] >= 0.99, (h, f)


@pytest.fixture(scope="module")
def cpu_bank(default_cpu, tmp_path_factory):
    """A float32 bank of the default model, built on the CPU."""
    from tl_latentlens.bank import build_bank

    hooks = [hk.hook_for_layer(layer, default_cpu.n_layers) for layer in (0, 2, 8, 16, 30)]
    out = tmp_path_factory.mktemp("cpu_bank") / "bank"
    return build_bank(default_cpu, corpus(96), out, hooks, batch_size=16, progress=False).root


K = 5
#: A unit query moved by a relative error e moves each cosine by at most about 2e; the streams
#: may differ by up to DEEP_REL.
SIM_TOL = 2 * DEEP_REL


def test_explain_on_cuda_gives_the_cpu_neighbours(default_cpu, default_cuda, cpu_bank, gpu_record):
    from tl_latentlens import Bank, LatentLens

    img = picture(seed=1)
    cpu = LatentLens(default_cpu, Bank.open(cpu_bank, vlm=default_cpu)).explain(img, k=K + 1)
    lens = LatentLens(default_cuda, Bank.open(cpu_bank, vlm=default_cuda))
    # the bank is searched where the model runs (exact search on the GPU)
    assert lens._search_device() == (None if KIND == "cpu" else str(default_cuda.device))
    gpu = lens.explain(img, k=K + 1)
    assert set(gpu.search.values()) == {"exact"}, gpu.search
    assert [(p.hook, p.index) for p in cpu.patches] == [(p.hook, p.index) for p in gpu.patches]
    outcome = {"latent": {"same": 0, "tie": 0}, "logit": {"same": 0, "tie": 0},
               "embedding": {"same": 0, "tie": 0}}  # fmt: skip
    for pc, pg in zip(cpu.patches, gpu.patches):
        where = f"{pc.hook} patch {pc.index}"
        got = same_ranking(pc.latent, pg.latent, K, lambda n: (n.hook, n.sentence_id, n.position),
                           lambda n: n.similarity, SIM_TOL)  # fmt: skip
        outcome["latent"][got] += 1
        # logits scale with the stream: the same relative error, on the top logit's size
        logit_tol = SIM_TOL * max(1.0, abs(pc.logit[0].score))
        for kind, tol in (("logit", logit_tol), ("embedding", SIM_TOL)):
            try:
                got = same_ranking(getattr(pc, kind), getattr(pg, kind), K,
                                   lambda t: t.token_id, lambda t: t.score, tol)  # fmt: skip
            except AssertionError as err:
                raise AssertionError(f"{kind} at {where}: {err}") from None
            outcome[kind][got] += 1
    gpu_record("explain_cpu_vs_cuda", outcome=outcome, timings_gpu=gpu.timings,
               timings_cpu=cpu.timings)  # fmt: skip


def test_baselines_on_cuda_give_the_cpu_top_k(default_cpu, default_cuda, gpu_record):
    """The same residuals (captured once, on the CPU) read by each device's lenses."""
    from tl_latentlens.capture import capture_image
    from tl_latentlens.lens import EmbeddingLens, LogitLens

    hooks = [hk.hook_for_layer(layer, default_cpu.n_layers) for layer in (0, 8, 16, 24, 30)]
    acts = capture_image(default_cpu, picture(seed=2), hooks=hooks)
    vectors = torch.cat([acts.residuals[h] for h in hooks])
    outcome = {}
    # the same inputs: only the lenses' own float32 products differ, by rounding
    for name, lens, tol in (("logit", LogitLens, 1e-3), ("embedding", EmbeddingLens, 1e-5)):
        cpu, gpu = lens(default_cpu)(vectors, k=K + 1), lens(default_cuda)(vectors, k=K + 1)
        counts = {"same": 0, "tie": 0}
        for row, (rc, rg) in enumerate(zip(cpu, gpu)):
            try:
                counts[same_ranking(rc, rg, K, lambda t: t.token_id, lambda t: t.score, tol)] += 1
            except AssertionError as err:
                raise AssertionError(f"{name} row {row}: {err}") from None
        outcome[name] = counts
    gpu_record("baselines_cpu_vs_cuda", outcome=outcome, n_vectors=int(vectors.shape[0]))


# ---- torchrun: two ranks on one GPU -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bank_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_torchrun_two_ranks_on_one_gpu_build_the_single_process_bank(tmp_path, gpu_record):
    """``torchrun --nproc_per_node=2 -m tl_latentlens build-bank --device cuda`` on a machine
    with one GPU: both ranks use cuda:0 (not cuda:1) and the bank is byte-identical to a
    single-process build on the same GPU (same kernels, same dtype)."""
    model = tiny_llava_dir(tmp_path / "tiny_llava")
    rng = np.random.default_rng(5)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(64)) + "\n")  # fmt: skip
    args = ["build-bank", str(text), "OUT", "--model", str(model), "--device", DEVICE,
            "--layers", "0", "1", "2", "--batch-size", "4", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def run(cmd: list[str], out: Path) -> None:
        cmd = [c if c != "OUT" else str(out) for c in cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )

    ranks = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
             f"--master_port={_free_port()}", "-m", "tl_latentlens"]  # fmt: skip
    run(ranks + args, tmp_path / "two")
    run([sys.executable, "-m", "tl_latentlens"] + args, tmp_path / "one")
    two, one = _bank_files(tmp_path / "two"), _bank_files(tmp_path / "one")
    assert sorted(two) == sorted(one)
    differ = [name for name in one if one[name] != two[name]]
    gpu_record("torchrun_two_ranks_one_gpu", files=len(one), differing=differ)
    assert not differ, f"files differ between the 2-rank and the 1-process build: {differ}"
