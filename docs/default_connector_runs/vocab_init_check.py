"""Round 5 init check: how flat is the vocab head's softmax at a given inverse temperature?

Run from the repository root after ``bash scripts/setup.sh`` and one training run (it reads the
cached training features):

    .venv/bin/python docs/default_connector_runs/vocab_init_check.py
"""

import torch
from safetensors.torch import load_file

from tl_latentlens.default.lm import load_lm
from tl_latentlens.models.connector import word_token_ids
from tl_latentlens.packaged_data import cache_dir

torch.set_num_threads(1)
# the training features of S1/V1 (data fingerprint 450acbe41164cd87), cached by their pipeline run
features = load_file(str(cache_dir() / "features" / "train-450acbe41164cd87.safetensors"))
print({k: v.shape for k, v in features.items()})
x = next(v for v in features.values() if v.ndim == 3)[:32].float()
bridge = load_lm("smollm2-135m")
ids = word_token_ids(bridge.tokenizer)
E = bridge.W_E.detach().float()[ids]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(1280, 576), torch.nn.GELU(), torch.nn.Linear(576, 576))
h = torch.nn.functional.normalize(net(x).reshape(-1, 576), dim=-1)
for centred in (False, True):
    Eu = torch.nn.functional.normalize(E - E.mean(0) if centred else E, dim=-1)
    cos = h @ Eu.T
    best = cos.max(-1).values.mean()
    print(f"centred {centred} cos mean {cos.mean():.3f} std {cos.std():.3f} max {best:.3f}")
    for s in (10, 30, 50, 100):
        p = (s * cos).softmax(-1)
        perplexity = (-(p * p.clamp_min(1e-30).log()).sum(-1)).exp().mean()
        out = p @ E
        spread = out.std(0).norm() / out.norm(dim=-1).mean()
        print(
            f"  scale {s}: perplexity {perplexity:.0f}, top1 p {p.max(-1).values.mean():.3f}, "
            f"out norm {out.norm(dim=-1).mean():.2f}, token spread (std/norm) {spread:.3f}"
        )
print("E norm", E.norm(dim=-1).mean())
