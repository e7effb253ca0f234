"""Forward-pass throughput of the default LM on this CPU: bfloat16 against float32, and the
residuals-only capture path against the full pass, side by side in one process.

On batches of the default corpus cut the way a bank build cuts them (32 sentences, the
longest, a middle and the shortest third of the corpus, as the build's longest-first plan
meets them), every bank hook cached, it prints tokens per second of:

* ``float32 full``: the pass as the bank build ran it before: blocks, final norm and the
  unembedding over the whole vocabulary (``capture.residuals_only`` disabled);
* ``float32 residuals-only``: the capture path now (the pass ends after the last block);
* ``bfloat16 residuals-only``: a bfloat16 copy of the model (on one smaller batch: on a CPU
  without bfloat16 instructions it is emulated and very slow);

the ratios, the cosine of bfloat16 residuals to float32 ones, and the choice
:func:`tl_latentlens.devices.fast_dtype` makes here (probed afresh and as cached). Variants
alternate within each repetition, so a machine whose speed drifts affects them alike.

    python benchmarks/bench_precision.py [--reps 3] [--sentences 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from unittest import mock

import torch

from tl_latentlens.devices import cpu_info


def cpu_line() -> str:
    """The CPU model, its matrix-relevant instruction-set flags, cores, torch and the load."""
    name, flags = cpu_info()
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"CPU: {name}; flags: {have}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {load}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions (median)")
    p.add_argument("--sentences", type=int, default=3000, help="corpus sentences sampled")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch (the build's)")
    p.add_argument("--bf16-batch", type=int, default=8, help="sentences in the bfloat16 batch")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    from tl_latentlens import capture
    from tl_latentlens import hooks as hk
    from tl_latentlens.default.bank_corpus import default_corpus
    from tl_latentlens.default.loader import load_default_vlm
    from tl_latentlens.devices import fast_dtype

    print(cpu_line())
    vlm = load_default_vlm()
    hooks = hk.default_bank_hooks(vlm.n_layers)
    corpus = default_corpus(args.sentences)
    lengths = [len(vlm.tokenizer(s)["input_ids"]) for s in corpus]
    order = sorted(range(len(corpus)), key=lambda i: -lengths[i])
    picks = {
        "longest": order[: args.batch],
        "middle": order[len(order) // 2 : len(order) // 2 + args.batch],
        "short": order[-args.batch - len(order) // 6 : -len(order) // 6],
    }
    batches = {
        name: vlm.tokenize_sentences([corpus[i] for i in idx], 64) for name, idx in picks.items()
    }

    def run(model, batch, full: bool) -> float:
        ctx = (
            contextlib.nullcontext()
            if not full
            else mock.patch.object(capture, "residuals_only", lambda b: contextlib.nullcontext())
        )
        t = time.perf_counter()
        with ctx:
            capture.capture_text_batch(model, batch, hooks)
        return time.perf_counter() - t

    print(f"{len(hooks)} bank hooks; batches of {args.batch} sentences (tokens incl. BOS):")
    ratios = []
    for name, batch in batches.items():
        n_tok = int(batch.attention_mask.sum())
        run(vlm, batch, False)  # warm-up
        full, fast = [], []
        for _ in range(args.reps):
            full.append(run(vlm, batch, True))
            fast.append(run(vlm, batch, False))
        f, s = statistics.median(full), statistics.median(fast)
        ratios.append(f / s)
        print(
            f"  {name:>7} {tuple(batch.input_ids.shape)}: float32 full {n_tok / f:6.0f} tok/s, "
            f"residuals-only {n_tok / s:6.0f} tok/s ({f / s:.2f}x)"
        )
    print(f"residuals-only vs full pass: {min(ratios):.2f}-{max(ratios):.2f}x")

    vlm16 = load_default_vlm(dtype=torch.bfloat16)
    small = vlm.tokenize_sentences([corpus[i] for i in picks["middle"][: args.bf16_batch]], 64)
    n_tok = int(small.attention_mask.sum())
    run(vlm, small, False)
    t32, t16 = [], []
    for _ in range(max(1, args.reps - 1)):
        t32.append(run(vlm, small, False))
        t16.append(run(vlm16, small, False))
    a, b = statistics.median(t32), statistics.median(t16)
    x32 = capture.capture_text_batch(vlm, small, hooks).residuals
    x16 = capture.capture_text_batch(vlm16, small, hooks).residuals
    cos = min(
        float(torch.nn.functional.cosine_similarity(x32[h], x16[h].float(), dim=-1).min())
        for h in hooks
    )
    print(
        f"bfloat16 vs float32, residuals-only, {tuple(small.input_ids.shape)}: "
        f"{n_tok / b:6.1f} vs {n_tok / a:6.1f} tok/s: bfloat16 {a / b:.3f}x the speed of "
        f"float32; lowest cosine to float32 over every hook and token {cos:.5f}"
    )
    fresh = fast_dtype("cpu", cache=False)
    cached = fast_dtype("cpu")
    print(f"fast_dtype('cpu'), probed now: {fresh.dtype_name} ({fresh.reason})")
    print(f"fast_dtype('cpu'), cached:     {cached.dtype_name} ({cached.reason})")
    print(cpu_line())


if __name__ == "__main__":
    main()
