"""Training the connector of a :class:`ConnectorVLM` on captions (LM and encoder frozen).

:func:`train_connector` is model-agnostic: it takes a VLM, a :class:`CaptionTemplate` and
precomputed :class:`CaptionSet` s (see :mod:`tl_latentlens.default.features`). It checkpoints
atomically every ``eval_every`` steps, resumes from the last checkpoint with identical results
(the batch order is a function of seed and step), keeps the connector with the lowest held-out
loss and writes a JSON manifest of the run. The default VLM's full pipeline (the
``tl-latentlens train-connector`` command) lives in :mod:`tl_latentlens.training.pipeline`.

Example:
    >>> cfg = TrainConfig(steps=200, batch_size=8, lr=1e-3)
    >>> result = train_connector(vlm, template, train_set, held_set, cfg, "runs/connector")
    >>> result.best_held_loss < result.manifest["evals"][0]["held_loss"]
    True
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_latentlens.models.connector import ConnectorVLM
from tl_latentlens.training.captioning import (
    CaptionSet,
    CaptionTemplate,
    caption_losses,
    mean_caption_loss,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "train_connector",
]

logger = logging.getLogger(__name__)

LAST_CKPT = "last.pt"
BEST_WEIGHTS = "best_connector.safetensors"
MANIFEST = "train_manifest.json"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a connector training run.

    Attributes:
        steps: Optimiser steps in total (the schedule is laid out over this many).
        batch_size: Sequences per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps, then cosine decay to ``lr * min_lr_ratio``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        grad_clip: Max gradient norm (``0`` disables clipping).
        eval_every: Steps between held-out evaluations and checkpoints.
        eval_batch_size: Sequences per held-out forward pass.
        seed: Seed of the batch order.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.eval_batch_size < 1:
            raise ValueError("steps, batch_size, eval_every and eval_batch_size must be >= 1")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and warmup_steps >= 0")

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step`` (linear warm-up, cosine decay)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cos


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_connector`.

    Attributes:
        best_step: Step whose connector had the lowest held-out loss (loaded into the VLM).
        best_held_loss: That loss (mean per caption token).
        manifest: The run's manifest (also written to ``out_dir/train_manifest.json``).
    """

    best_step: int
    best_held_loss: float
    manifest: dict[str, Any]


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Sample indices of ``step``: epoch-wise seeded permutations, last partial batch dropped."""
    if n < 1:
        raise ValueError("empty training set")
    bs = min(batch_size, n)
    per_epoch = n // bs
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[j * bs : (j + 1) * bs]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(
        {k: v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp)
    )
    os.replace(tmp, path)


def train_connector(
    vlm: ConnectorVLM,
    template: CaptionTemplate,
    train: CaptionSet,
    held_out: CaptionSet,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = True,
    data_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``vlm.connector`` on captioning loss; every other parameter stays frozen.

    Args:
        vlm: Model whose connector is trained in place (ends holding the best connector).
        template: Sequence layout (prompt, placeholders, EOS).
        train: Training features + captions.
        held_out: Held-out features + captions (model selection and the manifest).
        config: Optimisation settings.
        out_dir: Where ``last.pt``, ``best_connector.safetensors`` and the manifest go.
        resume: Continue from ``out_dir/last.pt`` when it exists.
        data_info: Extra facts for the manifest (data fingerprint, sizes …).

    Returns:
        :class:`TrainResult`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conn = vlm.connector
    conn.train()
    params = [p for p in conn.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, config.lr_factor)
    state: dict[str, Any] = {"step": 0, "loss_curve": [], "evals": [], "best": None, "train_s": 0.0}
    ckpt = out / LAST_CKPT
    if resume and ckpt.is_file():
        # weights_only: a checkpoint from someone else must not be able to run code
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved.get("config") != asdict(config):
            raise ValueError(f"{ckpt} was made with another TrainConfig; use a new out_dir")
        conn.load_state_dict(saved["connector"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
        logger.info("resuming from %s at step %d", ckpt, state["step"])
    dtype = next(conn.parameters()).dtype
    window: list[tuple[float, int]] = []
    bar = tqdm(total=config.steps, initial=state["step"], desc="training connector")
    t_run = time.perf_counter()
    while state["step"] < config.steps:
        step = state["step"]
        idx = batch_indices(step, len(train), config.batch_size, config.seed)
        feats, caps, keep = train.batch(idx)
        loss_sum, ntok = caption_losses(
            vlm, template, conn(feats.to(vlm.device, dtype)), caps, keep=keep
        )
        loss = loss_sum.sum() / ntok.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        state["step"] = step + 1
        loss_value = float(loss.detach())
        state["loss_curve"].append([step + 1, round(loss_value, 5)])
        window.append((float(loss_sum.detach().sum()), int(ntok.sum())))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if state["step"] % config.eval_every == 0 or state["step"] == config.steps:
            state["train_s"] += time.perf_counter() - t_run
            _evaluate(vlm, template, held_out, config, state, window, out)
            window = []
            _atomic_torch_save(
                {
                    "connector": conn.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "state": state,
                    "config": asdict(config),
                },
                ckpt,
            )
            _atomic_json(_manifest(config, state, train, held_out, data_info), out / MANIFEST)
            t_run = time.perf_counter()
    bar.close()
    if state["best"] is None:  # resumed a finished run without evals; evaluate now
        _evaluate(vlm, template, held_out, config, state, [], out)
    from safetensors.torch import load_file

    conn.load_state_dict(load_file(str(out / BEST_WEIGHTS)))
    conn.eval()
    manifest = _manifest(config, state, train, held_out, data_info)
    _atomic_json(manifest, out / MANIFEST)
    return TrainResult(state["best"]["step"], state["best"]["held_loss"], manifest)


def _evaluate(vlm, template, held_out, config, state, window, out: Path) -> None:
    conn = vlm.connector
    conn.eval()
    t0 = time.perf_counter()
    held = mean_caption_loss(vlm, template, held_out, config.eval_batch_size)
    conn.train()
    train_loss = sum(s for s, _ in window) / max(1, sum(n for _, n in window)) if window else None
    rec = {"step": state["step"], "train_loss": train_loss, "held_loss": held,
           "eval_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
    state["evals"].append(rec)
    logger.info("step %d: train %s held-out %.4f", state["step"], train_loss, held)
    if state["best"] is None or held < state["best"]["held_loss"]:
        state["best"] = {"step": state["step"], "held_loss": held}
        _save_weights(conn, out / BEST_WEIGHTS)


def _manifest(config, state, train, held_out, data_info) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "seed": config.seed,
        "steps_done": state["step"],
        "lr": config.lr,
        "batch_size": config.batch_size,
        "n_train": len(train),
        "n_held_out": len(held_out),
        "train_tokens_per_epoch": train.n_tokens,
        "best": state["best"],
        "evals": state["evals"],
        "loss_curve": state["loss_curve"],
        "timings": {
            "train_s": round(state["train_s"], 1),
            "s_per_step": round(state["train_s"] / max(1, state["step"]), 3),
            "torch_threads": torch.get_num_threads(),
        },
        "data": data_info or {},
    }
