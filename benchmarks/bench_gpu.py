"""End-to-end figures on a GPU (``scripts/gpu_check.sh`` runs this on a lent GPU machine).

On the embedded default VLM (SmolLM2-135M + EfficientNet-Lite0 + connector), on one device:

* **bank build throughput**: corpus tokens per second of ``build_bank`` (whole build: selection,
  forward passes, encoding, writing) at the paper's nine layers, in float32 and in the dtype
  :func:`tl_latentlens.devices.fast_dtype` picks for the device (bfloat16 on a bfloat16 GPU);
  after an untimed warm-up build (CUDA context, kernels);
* **ours against the official ``latentlens``** (PyPI 0.1.0, ``build_index``) on the same model
  (float32), corpus, layers, batch size and device, where ``latentlens`` can be imported;
* **explain latency** of one image (``LatentLens.explain``, k=5, baselines on, exact search on
  the device): median of a few runs after a warm-up, with its forward / search / baselines split;
* **exact search latency** on the device for 49 and 490 queries (one image's visual tokens at
  one and at ten layers) over one hook of 500,000 **synthetic** float16 vectors (random: only
  the timing means anything), kept on the device and streamed to it.

Each part is timed on its own and a failing part is recorded (its error) without stopping the
others. Without CUDA the script runs the same parts at a tiny size (``--size tiny``), which is a
rehearsal of the script, not a measurement.

Usage::

    python benchmarks/bench_gpu.py --out gpu_bench.json            # full on CUDA, tiny on a CPU
    python benchmarks/bench_gpu.py --size tiny --device cpu --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = {
    # sentences (ours), sentences (ours vs official), search rows, explain runs
    "full": {"sentences": 4000, "official_sentences": 1000, "search_rows": 500_000, "runs": 5},
    "tiny": {"sentences": 48, "official_sentences": 24, "search_rows": 20_000, "runs": 2},
}
K = 5
#: Sentences are cut at this many tokens (the bank's default; the official code cuts at 512,
#: which no sentence of this corpus reaches).
MAX_TOKENS = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_of(fn, device: torch.device, runs: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``runs`` calls after one untimed warm-up call."""
    out = fn()
    times = []
    for _ in range(runs):
        t, out = timed(fn, device)
        times.append(t)
    return statistics.median(times), times, out


#: Monotonic time after which no part starts (``--budget-s``; ``None``: no limit).
DEADLINE: float | None = None
#: Where the figures go (``--out``).
OUT: Path | None = None


def part(results: dict, name: str, fn) -> Any:
    """Run one part; record its figures or its error, never raise."""
    if DEADLINE is not None and time.monotonic() > DEADLINE:
        results[name] = {"ok": False, "skipped": "the time budget (--budget-s) was spent"}
        print(f"[bench_gpu] {name}: skipped (budget spent)", flush=True)
        return results[name]
    t0 = time.perf_counter()
    try:
        out = fn()
        results[name] = {"ok": True, **(out or {})}
    except Exception as err:  # noqa: BLE001 - one failing part must not hide the others
        results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        print(f"[bench_gpu] {name} FAILED: {type(err).__name__}: {err}", flush=True)
    results[name]["wall_s"] = round(time.perf_counter() - t0, 3)
    if OUT is not None:  # after every part: a run stopped from outside keeps what it measured
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"[bench_gpu] {name}: {json.dumps(results[name], default=str)[:600]}", flush=True)
    return results[name]


def environment(device: torch.device) -> dict:
    from tl_latentlens.devices import fast_dtype

    choice = fast_dtype(device)
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fast_dtype": choice.dtype_name,
        "fast_dtype_reason": choice.reason,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, cuda=torch.version.cuda, capability=[props.major, props.minor],
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
    return env


def corpus(n: int, seed: int = 0) -> list[str]:
    from bench_bank_common import synthetic_corpus, words

    return synthetic_corpus(n, words(2000), seed=seed)


def n_tokens(vlm, sentences: list[str], max_tokens: int | None) -> int:
    total = 0
    for i in range(0, len(sentences), 256):
        batch = vlm.tokenize_sentences(sentences[i : i + 256], max_tokens)
        total += int(batch.attention_mask.sum())
    return total


def load(device: torch.device, dtype: torch.dtype):
    from tl_latentlens.models.load import load_vlm

    return load_vlm("default", device=device, dtype=dtype)


def build_throughput(vlm, sentences: list[str], work: Path, tag: str, device) -> dict:
    """Tokens per second of a whole ``build_bank`` at the paper's layers."""
    from tl_latentlens import hooks as hk
    from tl_latentlens.bank import build_bank

    hooks = hk.default_bank_hooks(vlm.n_layers)
    build_bank(vlm, sentences[:32], work / f"warm-{tag}", hooks, progress=False)  # untimed
    seconds, bank = timed(
        lambda: build_bank(
            vlm, sentences, work / f"bank-{tag}", hooks, max_tokens=MAX_TOKENS, progress=False
        ),
        device,
    )
    tokens = n_tokens(vlm, sentences, MAX_TOKENS)
    return {
        "batch_size": bank.manifest.build.batch_size,
        "dtype": str(next(vlm.bridge.parameters()).dtype).removeprefix("torch."),
        "sentences": len(sentences),
        "corpus_tokens": tokens,
        "entries": int(bank.n_entries()),
        "hooks": len(hooks),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "bank": str(bank.root),
    }


def ours_vs_official(vlm, sentences: list[str], work: Path, device: torch.device) -> dict:
    """Both builds on the same model (float32), corpus, layers (< n_layers), batch size."""
    import latentlens
    from latentlens import build_index
    from transformers import AutoTokenizer

    from tl_latentlens import hooks as hk
    from tl_latentlens.bank import build_bank
    from tl_latentlens.default.lm import load_hf_lm

    layers = [la for la in hk.paper_layers(vlm.n_layers) if la < vlm.n_layers]
    hooks = [hk.hook_for_layer(la, vlm.n_layers) for la in layers]
    batch = 32
    model, _, hf_dir = load_hf_lm()
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir), add_bos_token=True)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def official(texts):
        with torch.no_grad():
            return build_index(str(hf_dir), texts, layers=layers, max_contexts_per_token=50,
                               batch_size=batch, show_progress=False, model=model, tokenizer=tok)  # fmt: skip

    official(sentences[:16])  # warm-up
    t_off, index = timed(lambda: official(sentences), device)
    build_bank(vlm, sentences[:16], work / "warm-cmp", hooks, batch_size=batch, progress=False)
    t_ours, bank = timed(
        lambda: build_bank(
            vlm,
            sentences,
            work / "bank-cmp",
            hooks,
            batch_size=batch,
            max_tokens=MAX_TOKENS,
            max_per_token=50,
            progress=False,
        ),  # fmt: skip
        device,
    )
    tokens = n_tokens(vlm, sentences, MAX_TOKENS)
    return {
        "latentlens_version": latentlens.__version__,
        "sentences": len(sentences),
        "corpus_tokens": tokens,
        "layers": layers,
        "batch_size": batch,
        "official_s": round(t_off, 3),
        "ours_s": round(t_ours, 3),
        "official_tokens_per_s": round(tokens / t_off, 1),
        "ours_tokens_per_s": round(tokens / t_ours, 1),
        "speedup_ours_over_official": round(t_off / t_ours, 2),
        "official_entries_per_layer": len(index) // max(len(layers), 1),
        "ours_entries": int(bank.n_entries()),
    }


def picture():
    """A photo where scikit-image ships one (the GPU image has it), else a drawn scene."""
    from PIL import Image, ImageDraw

    try:
        from tl_latentlens.default.assets import skimage_data_dir

        path = skimage_data_dir() / "astronaut.png"
        if path.is_file():
            return Image.open(path).convert("RGB"), "skimage astronaut.png"
    except Exception:  # noqa: BLE001 - any reason: draw one instead
        pass
    img = Image.new("RGB", (224, 224), (90, 140, 200))
    draw = ImageDraw.Draw(img)
    draw.ellipse([30, 40, 120, 130], fill=(230, 200, 40))
    draw.rectangle([110, 120, 200, 210], fill=(160, 40, 40))
    return img, "drawn shapes"


def explain_latency(vlm, bank_root: str, runs: int, device: torch.device) -> dict:
    from tl_latentlens import Bank, LatentLens

    lens = LatentLens(vlm, Bank.open(bank_root, vlm=vlm))
    img, what = picture()
    med, times, result = median_of(lambda: lens.explain(img, k=K), device, runs)
    return {
        "image": what,
        "visual_hooks": len(result.hooks),
        "patches": len(result.patches),
        "bank_entries": int(lens.bank.n_entries()),
        "median_s": round(med, 4),
        "runs_s": [round(t, 4) for t in times],
        "last_split_s": {k: round(v, 4) for k, v in result.timings.items()},
        "search": sorted(set(result.search.values())),
    }


def search_latency(rows: int, runs: int, device: torch.device, d: int = 576) -> dict:
    """Exact top-5 over ``rows`` synthetic float16 vectors (timing only)."""
    from tl_latentlens.bank.format.vectors import HookVectors
    from tl_latentlens.bank.search.exact import exact_top_k

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, device=device, generator=gen, dtype=torch.float32)
    norms = x.norm(dim=1).cpu().numpy().astype(np.float32)
    hv = HookVectors(x.to(torch.float16).cpu().numpy(), norms, "float16")
    del x
    out: dict[str, Any] = {"rows": rows, "d": d, "codec": "float16", "synthetic": True}
    for m in (49, 490):
        q = torch.randn(m, d, generator=torch.Generator().manual_seed(m)).numpy()
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        cache: dict = {}

        def kept_search(q=q, cache=cache):
            return exact_top_k(hv, q, K, device=device, device_cache=cache)

        def streamed_search(q=q):
            return exact_top_k(hv, q, K, device=device)

        first, _ = timed(kept_search, device)  # includes putting the hook on the device
        kept, _, _ = median_of(kept_search, device, runs)
        streamed, _, _ = median_of(streamed_search, device, max(1, runs // 2))
        out[f"q{m}"] = {
            "first_call_s": round(first, 4),
            "kept_median_s": round(kept, 5),
            "streamed_median_s": round(streamed, 4),
            "kept_on_device": bool(cache),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    ap.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="full (default on CUDA) or tiny (default on a CPU: a rehearsal)")  # fmt: skip
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--official-sentences", type=int, default=None)
    ap.add_argument("--search-rows", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip (build, official, ...)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no part after this")
    args = ap.parse_args()
    global DEADLINE, OUT
    OUT = args.out
    if args.budget_s is not None:
        DEADLINE = time.monotonic() + args.budget_s

    from tl_latentlens.devices import fast_dtype, resolve_device

    device = resolve_device(args.device)
    size = dict(SIZES[args.size or ("full" if device.type == "cuda" else "tiny")])
    for key in ("sentences", "official_sentences", "search_rows"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    torch.set_grad_enabled(False)
    results: dict[str, Any] = {"size": size, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    part(results, "environment", lambda: environment(device))
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    sentences = corpus(size["sentences"])

    vlms: dict[str, Any] = {}

    def loaded(dtype: torch.dtype):
        key = str(dtype)
        if key not in vlms:
            t, vlms[key] = timed(lambda: load(device, dtype), device)
            results.setdefault("load_s", {})[key.removeprefix("torch.")] = round(t, 2)
        return vlms[key]

    fast = fast_dtype(device).dtype
    dtypes = [torch.float32] + ([fast] if fast != torch.float32 else [])
    for dtype in dtypes:
        name = f"build_{str(dtype).removeprefix('torch.')}"
        if "build" not in args.skip:
            part(results, name, lambda dtype=dtype, name=name: build_throughput(
                loaded(dtype), sentences, work, name, device))  # fmt: skip
    bank = results.get("build_float32", {}).get("bank")
    if bank and "explain" not in args.skip:
        part(results, "explain", lambda: explain_latency(
            loaded(torch.float32), bank, size["runs"], device))  # fmt: skip
    if "search" not in args.skip:
        part(results, "search", lambda: search_latency(size["search_rows"], size["runs"], device))
    if "official" not in args.skip:
        part(results, "ours_vs_official", lambda: ours_vs_official(
            loaded(torch.float32), corpus(size["official_sentences"], seed=1), work, device))  # fmt: skip
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    text = json.dumps(results, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
