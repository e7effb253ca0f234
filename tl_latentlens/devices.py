"""Devices and number formats: where tensors go and which precision this machine runs fastest.

Two rules (``shared/ARCHITECTURE.md``, "Devices and number formats"):

* **No number format is chosen by device type alone.** CPUs differ: with AVX512-BF16 or AMX a
  bfloat16 matrix product beats float32, on an AVX2-only CPU it is emulated and dozens of times
  slower. :func:`fast_dtype` decides per machine: on a CPU (or Apple's MPS) by a short measured
  probe of a product shaped like a small LM's, cached per machine and torch version
  (``<cache>/precision/*.json``); on CUDA by the device's capability (bfloat16 where
  ``torch.cuda.is_bf16_supported()``). Every choice is logged with its reason and returned as a
  :class:`PrecisionChoice` that callers record (bank manifests, run records).
* **One name per physical device.** ``"cuda"`` and ``"cuda:0"`` are the same GPU:
  :func:`device_key` gives both the same key, so caches keyed by it hold one copy per GPU.

Example:
    >>> choice = fast_dtype("cpu")
    >>> choice.dtype, choice.reason          # doctest: +SKIP
    (torch.float32, 'cpu probe: bfloat16 <ratio>x the speed of float32 (<cpu>, torch <version>)')
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tl_latentlens._io import atomic_write_json
from tl_latentlens.packaged_data import cache_dir

__all__ = [
    "PROBE_SHAPE",
    "PROBE_VERSION",
    "PrecisionChoice",
    "cpu_info",
    "device_key",
    "fast_dtype",
    "free_device_bytes",
    "full_float32",
    "machine_id",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: ``[m, k] @ [k, n]``: the shape of one MLP product of a ~100M-parameter LM on a short batch.
PROBE_SHAPE = (128, 576, 1536)
#: Bumped when the probe or its rule changes, so cached decisions are measured again.
PROBE_VERSION = 1
#: A reduced format is chosen only when it is at least this much faster than float32.
MIN_SPEEDUP = 1.15

DeviceLike = str | torch.device | None


@dataclass(frozen=True)
class PrecisionChoice:
    """Which dtype a device runs fastest and why.

    Attributes:
        dtype_name: ``"float32"`` or ``"bfloat16"``.
        reason: One line naming the evidence (probe timings or capability).
        speedup: Measured reduced-over-float32 speed ratio (``None``: not measured).
    """

    dtype_name: str
    reason: str
    speedup: float | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype."""
        return getattr(torch, self.dtype_name)


def resolve_device(device: DeviceLike = None) -> torch.device:
    """The device to use: ``None`` means CUDA when present, else the CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_key(device: DeviceLike) -> str:
    """One name per physical device: ``"cuda"`` and ``"cuda:0"`` (when 0 is current) are the
    same GPU, so a cache keyed by this holds one copy per GPU.

    Example:
        >>> device_key("cpu")
        'cpu'
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def free_device_bytes(device: DeviceLike) -> int | None:
    """Free memory on an accelerator (``torch.cuda.mem_get_info``); ``None`` on the CPU and on
    devices that do not report it (residency there follows the RAM budget)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 products at full float32 precision inside the block: TF32 off for CUDA matrix
    products and cuDNN convolutions (torch turns it on for convolutions by default; a user or
    a library may turn it on for products). With TF32 a vision tower's convolutions and a
    search's products keep a 10-bit mantissa on an Ampere-or-newer GPU, and visual tokens and
    neighbour ranks differ from the CPU's. The settings are process-wide and restored on exit
    through the API they were read with (torch >= 2.9's ``fp32_precision`` where it exists,
    since reading the older ``allow_tf32`` flags after the newer setting was used can raise).
    No effect on CPU results.

    Example:
        >>> with full_float32():
        ...     feats = encoder(pixels)
    """
    backends = torch.backends
    knobs = [backends.cuda.matmul, backends.cudnn.conv, backends.cudnn.rnn]
    if all(hasattr(k, "fp32_precision") for k in knobs):
        saved = [(k, "fp32_precision", k.fp32_precision) for k in knobs]
        off = "ieee"
    else:  # older torch: only the flags
        saved = [(backends.cuda.matmul, "allow_tf32", backends.cuda.matmul.allow_tf32),
                 (backends.cudnn, "allow_tf32", backends.cudnn.allow_tf32)]  # fmt: skip
        off = False
    for knob, name, _ in saved:
        setattr(knob, name, off)
    try:
        yield
    finally:
        for knob, name, value in reversed(saved):
            setattr(knob, name, value)


def machine_id() -> str:
    """Processor model, its instruction-set flags and the torch version, hashed: the key of a
    cached probe (a probe measured on another CPU or torch build is measured again)."""
    name, flags = cpu_info()
    parts = [platform.machine(), name, torch.__version__, " ".join(flags)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fast_dtype(device: DeviceLike = None, *, cache: bool = True) -> PrecisionChoice:
    """The fastest safe forward-pass dtype on ``device``: ``bfloat16`` where this machine runs
    it faster than float32, else ``float32``. Never decided by device type alone.

    * CUDA: bfloat16 where the GPU supports it natively (compute capability >= 8.0, as
      ``torch.cuda.is_bf16_supported()`` reports), else float32.
    * CPU and MPS: a measured probe (:data:`PROBE_SHAPE`, float32 against bfloat16, best of a
      few runs); bfloat16 only when it is :data:`MIN_SPEEDUP` x faster. The result is cached
      per :func:`machine_id` and :data:`PROBE_VERSION`.

    Args:
        device: Where the forward passes run (``None``: CUDA if present, else CPU).
        cache: Read and write the cached probe.

    Returns:
        The choice, also logged at INFO with its reason.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported())
        name = torch.cuda.get_device_name(dev)
        choice = PrecisionChoice(
            "bfloat16" if ok else "float32",
            f"cuda capability: {name} {'supports' if ok else 'lacks'} native bfloat16",
        )
    elif dev.type in ("cpu", "mps"):
        choice = _probed(dev, cache)
    else:  # meta and others: nothing to measure, nothing to gain
        choice = PrecisionChoice("float32", f"{dev.type}: no probe, float32")
    if _LOGGED.get(str(dev)) != choice:
        _LOGGED[str(dev)] = choice
        logger.info("forward-pass dtype on %s: %s (%s)", dev, choice.dtype_name, choice.reason)
    return choice


_LOGGED: dict[str, PrecisionChoice] = {}


@functools.cache
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """This CPU's model name and instruction-set flags (``/proc/cpuinfo``; the platform's
    processor name and no flags where that file is missing), read once per process.

    Example:
        >>> name, flags = cpu_info()
        >>> "avx2" in flags  # doctest: +SKIP
        True
    """
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    return name, tuple((fields.get("flags") or fields.get("Features") or "").split())


def _probe_path(dev: torch.device) -> Path:
    return cache_dir() / "precision" / f"{dev.type}-{machine_id()}-v{PROBE_VERSION}.json"


#: Probe results of this process by cache file (read or measured once per process).
_SEEN: dict[Path, PrecisionChoice] = {}


def _probed(dev: torch.device, cache: bool) -> PrecisionChoice:
    path = _probe_path(dev)
    if cache and path in _SEEN:
        return _SEEN[path]
    if cache and path.is_file():
        try:
            _SEEN[path] = PrecisionChoice(**json.loads(path.read_text()))
            return _SEEN[path]
        except (OSError, ValueError, TypeError) as e:  # torn or foreign: measure again
            logger.warning("precision probe cache %s unreadable (%s); measuring again", path, e)
    t32 = _time_product(dev, torch.float32)
    t16 = _time_product(dev, torch.bfloat16)
    choice = _decide(dev, t32, t16)
    if cache:
        _SEEN[path] = choice
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, asdict(choice))
        except OSError as e:  # the cache is only an optimisation
            logger.warning("could not cache the precision probe in %s: %s", path, e)
    return choice


def _decide(dev: torch.device, t_float32: float, t_bfloat16: float | None) -> PrecisionChoice:
    """The rule, apart from the clock (tests feed it timings both ways)."""
    where = f"{cpu_info()[0] if dev.type == 'cpu' else dev.type}, torch {torch.__version__}"
    if t_bfloat16 is None:
        return PrecisionChoice("float32", f"{dev.type} probe: bfloat16 unsupported ({where})")
    speedup = t_float32 / max(t_bfloat16, 1e-12)
    name = "bfloat16" if speedup >= MIN_SPEEDUP else "float32"
    return PrecisionChoice(
        name,
        f"{dev.type} probe: bfloat16 {speedup:.2f}x the speed of float32 ({where})",
        round(speedup, 3),
    )


def _time_product(dev: torch.device, dtype: torch.dtype, reps: int = 3) -> float | None:
    """Best wall time of one :data:`PROBE_SHAPE` product (``None``: the dtype fails here).
    The bfloat16 run stops early once it is clearly slower, so a CPU that emulates bfloat16
    pays well under a second."""
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    try:
        a = torch.randn(m, k, generator=gen).to(dev, dtype)
        b = torch.randn(k, n, generator=gen).to(dev, dtype)
        best = float("inf")
        for _ in range(reps + 1):  # the first run warms up kernels and caches
            _sync(dev)
            t0 = time.perf_counter()
            (a @ b).sum().item()
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
            if best > 0.25:  # already far slower than any float32 run of this size
                break
        return best
    except (RuntimeError, TypeError) as e:
        logger.info("no %s products on %s: %s", dtype, dev, e)
        return None


def _sync(dev: torch.device) -> None:
    if dev.type == "mps":
        torch.mps.synchronize()
