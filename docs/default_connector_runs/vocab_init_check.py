import torch
from safetensors.torch import load_file
from tl_latentlens.default.lm import load_lm
from tl_latentlens.models.connector import word_token_ids
torch.set_num_threads(1)
f = load_file("/root/.cache/tl_latentlens/features/train-450acbe41164cd87.safetensors")
print({k: v.shape for k, v in f.items()})
x = next(v for v in f.values() if v.ndim == 3)[:32].float()
b = load_lm("smollm2-135m"); ids = word_token_ids(b.tokenizer); E = b.W_E.detach().float()[ids]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(1280,576), torch.nn.GELU(), torch.nn.Linear(576,576))
h = torch.nn.functional.normalize(net(x).reshape(-1,576), dim=-1)
for centred in (False, True):
    Eu = torch.nn.functional.normalize(E - E.mean(0) if centred else E, dim=-1)
    cos = h @ Eu.T
    print("centred", centred, "cos mean %.3f std %.3f max %.3f" % (cos.mean(), cos.std(), cos.max(-1).values.mean()))
    for s in (10, 30, 50, 100):
        p = (s*cos).softmax(-1)
        ent = -(p*p.clamp_min(1e-30).log()).sum(-1).exp().mean()
        out = p @ E
        o = torch.nn.functional.normalize(out - out.mean(0), dim=-1)
        print(f"  scale {s}: perplexity {ent:.0f}, top1 p {p.max(-1).values.mean():.3f}, out norm {out.norm(dim=-1).mean():.2f}, token spread (std/norm) {(out.std(0).norm()/out.norm(dim=-1).mean()):.3f}")
print("E norm", E.norm(dim=-1).mean())
