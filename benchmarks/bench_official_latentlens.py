"""tl_latentlens bank vs the official ``latentlens`` package (PyPI 0.1.0), same model and corpus.

Reported as ratios (ours / official): build time, query time, disk size, peak RAM, and the
overlap of the top-5 neighbours.

Each side runs in its own subprocess (so peak RAM is its own). The official package must live in
a separate virtual environment whose other packages are ours (no torch is installed):

    python -m venv /tmp/latentlens-venv
    SP=$(/tmp/latentlens-venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    MAIN=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$MAIN')" > $SP/main-venv.pth
    /tmp/latentlens-venv/bin/pip install --no-deps latentlens==0.1.0

(or run this script with ``--setup``). Differences of method that the comparison controls:

* both store every distinct prefix (``max_per_token=None`` / ``max_contexts_per_token=1e9``),
  since the official cap is first-come per token *string* and ours a seeded reservoir per id;
* the official code never stores positions 0 and 1 (it assumes position 0 is BOS and skips the
  first word too); we store every non-special token, so the overlap is also given with our
  position-1 entries filtered out ("like-for-like");
* official layer ``L`` is HF ``hidden_states[L]`` = our ``hook_for_layer(L)`` for ``L < n_layers``
  (its last layer is after the final norm, ours before), so layers ``< n_layers`` are compared;
* the official tokenizer is loaded with ``add_bos_token=True`` and right padding, and checked to
  give the same ids as ours.

Usage::

    python benchmarks/bench_official_latentlens.py                    # tiny random Llama
    python benchmarks/bench_official_latentlens.py --model smollm2 --sentences 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path("/tmp/latentlens-venv")


def setup_venv(venv: Path) -> None:
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    sp = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(sp, "main-venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "latentlens==0.1.0"], check=True)


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---- roles (each runs in its own process) ----------------------------------------------------
def role_prep(cfg: dict) -> dict:
    """Corpus file, query vectors (held-out sentences' residuals), token ids for the check."""
    from bench_bank_common import load_model, synthetic_corpus, words

    from tl_latentlens import hooks as hk
    from tl_latentlens.capture import capture_text

    loaded = load_model(cfg["model"], cfg["vocab"])
    vlm = loaded.vlm
    sents = synthetic_corpus(cfg["sentences"] + 200, words(cfg["vocab"]), seed=1)
    corpus, held = sents[: cfg["sentences"]], sents[cfg["sentences"] :]
    Path(cfg["work"], "corpus.txt").write_text("\n".join(corpus) + "\n")
    hooks = [hk.hook_for_layer(layer, vlm.n_layers) for layer in cfg["layers"]]
    rng = np.random.default_rng(0)
    rows = []
    for acts in capture_text(vlm, held, hooks, batch_size=16):
        for i in range(acts.token_id.shape[0]):
            rows.append(acts.residuals[hooks[rng.integers(len(hooks))]][i].numpy())
    pick = rng.choice(len(rows), cfg["queries"], replace=False)
    np.save(Path(cfg["work"], "queries.npy"), np.stack([rows[i] for i in pick]).astype(np.float32))
    tb = vlm.tokenize_sentences(corpus[:20], None)
    ids = [row[m.bool()].tolist() for row, m in zip(tb.input_ids, tb.attention_mask)]
    return {"hf_dir": str(loaded.hf_dir), "desc": loaded.desc, "n_layers": vlm.n_layers, "ids": ids}


def role_ours(cfg: dict) -> dict:
    from bench_bank_common import load_model

    from tl_latentlens import hooks as hk
    from tl_latentlens.bank import Bank, build_bank

    vlm = load_model(cfg["hf_dir"] if cfg["model"] == "tiny" else cfg["model"], cfg["vocab"]).vlm
    base = _peak_mb()
    hooks = [hk.hook_for_layer(layer, vlm.n_layers) for layer in cfg["layers"]]
    out = Path(cfg["work"], "ours")
    t0 = time.perf_counter()
    build_bank(
        vlm, Path(cfg["work"], "corpus.txt"), out, hooks, max_per_token=None,
        batch_size=cfg["batch_size"], max_tokens=None, progress=False,
    )  # fmt: skip
    t_build = time.perf_counter() - t0
    q = np.load(Path(cfg["work"], "queries.npy"))
    t0 = time.perf_counter()
    bank = Bank.open(out, vlm)
    bank.search(q[:1], k=5)  # loads the indexes
    t_load = time.perf_counter() - t0
    res = {
        "build_s": t_build,
        "load_s": t_load,
        "disk": _dir_size(out),
        "n_entries": bank.n_entries(),
    }
    for exact in (False, True):
        t0 = time.perf_counter()
        hits = bank.search(q, k=5, method="exact" if exact else "auto")
        res[f"query_{'exact' if exact else 'hnsw'}_s"] = time.perf_counter() - t0
        res[f"top_{'exact' if exact else 'hnsw'}"] = [
            [(n.sentence, n.position, bank.layers[n.hook], n.similarity) for n in row]
            for row in hits
        ]
    wide = bank.search(q, k=40, method="exact")
    res["top_like"] = [
        [(n.sentence, n.position, n.layer, n.similarity) for n in row if n.position >= 2][:5]
        for row in wide
    ]
    res["peak_mb"], res["base_mb"] = _peak_mb(), base
    return res


def role_official(cfg: dict) -> dict:
    import latentlens
    import torch
    from latentlens import ContextualIndex, build_index
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg["model"] == "smollm2":
        from tl_latentlens.default.lm import load_hf_lm

        model = load_hf_lm()[0]
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg["hf_dir"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(cfg["hf_dir"], add_bos_token=True)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    corpus = Path(cfg["work"], "corpus.txt").read_text().splitlines()
    same = all(tok(s)["input_ids"] == ids for s, ids in zip(corpus, cfg["ids"]))
    base = _peak_mb()
    out = Path(cfg["work"], "official")
    t0 = time.perf_counter()
    index = build_index(
        cfg["hf_dir"], corpus, layers=cfg["layers"], max_contexts_per_token=10**9,
        batch_size=cfg["batch_size"], show_progress=False, model=model, tokenizer=tok,
    )  # fmt: skip
    index.save(out)
    t_build = time.perf_counter() - t0
    del index
    q = torch.from_numpy(np.load(Path(cfg["work"], "queries.npy")))
    t0 = time.perf_counter()
    index = ContextualIndex.from_directory(out)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = index.search(q, top_k=5)
    t_query = time.perf_counter() - t0
    return {
        "version": latentlens.__version__, "same_ids": same, "build_s": t_build, "load_s": t_load,
        "query_s": t_query, "disk": _dir_size(out), "n_entries": len(index) // len(cfg["layers"]),
        "top": [[(n.caption, n.position, n.contextual_layer, n.similarity) for n in row] for row in hits],
        "peak_mb": _peak_mb(), "base_mb": base,
    }  # fmt: skip


def run_role(python: str, role: str, cfg: dict) -> dict:
    cfg_path = Path(cfg["work"], f"{role}.json")
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(HERE), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--role", role, "--cfg", str(cfg_path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{role} failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(cfg["work"], f"{role}.out.json").read_text())


def overlap(a: list, b: list, key=lambda n: (n[0], n[1], n[2])) -> float:
    return float(
        np.mean(
            [
                len({key(x) for x in ra} & {key(y) for y in rb}) / max(len(rb), 1)
                for ra, rb in zip(a, b)
            ]
        )
    )


def sim_agreement(a: list, b: list, tol: float = 2e-3) -> float:
    """Fraction of ranks whose similarities agree (robust to ties between identical vectors)."""
    pairs = [abs(x[3] - y[3]) <= tol for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return float(np.mean(pairs))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | path to a HF causal LM dir")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--layers", default=None, help="comma-separated (default: official auto_layers, < n_layers)"
    )
    ap.add_argument("--official-python", default=str(DEFAULT_VENV / "bin" / "python"))
    ap.add_argument(
        "--setup", action="store_true", help=f"create {DEFAULT_VENV} with latentlens first"
    )
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        cfg = json.loads(Path(args.cfg).read_text())
        out = {"prep": role_prep, "ours": role_ours, "official": role_official}[args.role](cfg)
        Path(cfg["work"], f"{args.role}.out.json").write_text(json.dumps(out))
        return
    if args.setup:
        setup_venv(DEFAULT_VENV)
    if not Path(args.official_python).exists():
        sys.exit(
            f"no official venv at {args.official_python}: run with --setup (needs PyPI) or see the docstring"
        )
    work = Path(tempfile.mkdtemp(prefix="bench-official-"))
    n_layers = {"tiny": 4, "smollm2": 30}.get(args.model)
    if args.layers:
        layers = [int(x) for x in args.layers.split(",")]
    else:  # the official auto_layers(n), minus its final-norm layer n
        base = [x for x in (1, 2, 4, 8, 16, 24) if x < n_layers]
        layers = sorted(set(base + [n_layers - 2, n_layers - 1]))
    cfg = {
        "model": args.model, "vocab": args.vocab, "sentences": args.sentences, "queries": args.queries,
        "batch_size": args.batch_size, "layers": layers, "work": str(work),
    }  # fmt: skip
    try:
        prep = run_role(sys.executable, "prep", cfg)
        cfg.update(hf_dir=prep["hf_dir"], ids=prep["ids"])
        ours = run_role(sys.executable, "ours", cfg)
        off = run_role(args.official_python, "official", cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.model == "tiny" and cfg.get("hf_dir"):
            shutil.rmtree(cfg["hf_dir"], ignore_errors=True)
    mib = 2**20
    print(f"model: {prep['desc']}; layers {layers}; corpus {args.sentences} synthetic sentences; "
          f"{args.queries} queries (held-out token residuals); batch_size {args.batch_size}")  # fmt: skip
    print(
        f"official latentlens {off['version']} (separate venv, --no-deps); identical token ids: {off['same_ids']}"
    )
    print(
        f"entries per layer: ours {ours['n_entries']}, official {off['n_entries']} (it skips positions 0-1)"
    )
    rows = [
        ("build time (s)", ours["build_s"], off["build_s"]),
        ("load time (s)", ours["load_s"], off["load_s"]),
        (f"query time, {args.queries} queries, hnsw (s)", ours["query_hnsw_s"], off["query_s"]),
        (f"query time, {args.queries} queries, exact (s)", ours["query_exact_s"], off["query_s"]),
        ("disk (MiB)", ours["disk"] / mib, off["disk"] / mib),
        ("peak RSS (MiB)", ours["peak_mb"], off["peak_mb"]),
        (
            "peak RSS above model load (MiB)",
            ours["peak_mb"] - ours["base_mb"],
            off["peak_mb"] - off["base_mb"],
        ),
    ]
    print(f"{'':44s} {'ours':>10s} {'official':>10s} {'ratio':>8s}")
    for name, a, b in rows:
        print(f"{name:44s} {a:10.3f} {b:10.3f} {a / b:7.2f}x")
    print(f"top-5 overlap (same sentence, position, layer): hnsw {overlap(ours['top_hnsw'], off['top']):.3f}, "
          f"exact {overlap(ours['top_exact'], off['top']):.3f}, like-for-like (ours without position 1) "
          f"{overlap(ours['top_like'], off['top']):.3f}")  # fmt: skip
    print(
        f"top-5 similarity agreement rank by rank (|diff| <= 2e-3): like-for-like {sim_agreement(ours['top_like'], off['top']):.3f}"
    )


if __name__ == "__main__":
    main()
