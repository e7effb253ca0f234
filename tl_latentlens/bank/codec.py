"""Vector storage codecs: ``float32``, ``float16``, ``int8_rotated`` and the legacy ``int8``.

Every codec decodes to float32. A build always encodes the model's residuals as *raw* rows
(float32 or float16, :func:`encode`); the 1-byte codecs are applied afterwards per hook, because
their parameters are statistics of the whole hook. The norm of each *stored* (decoded) vector
is kept beside it, so cosine similarities computed from the stored values are exact for what
is stored.

``int8_rotated`` (1 byte per component; the compact codec to use): each row ``x`` is made a
unit row ``u = x / |x|``, centred on the hook's mean unit row ``mu`` and turned by a fixed random
orthogonal matrix ``R`` (which spreads the residual stream's few huge outlier dimensions over
all dimensions), then quantised with one scale per row::

    z = (u - mu) @ R        s = max|z| / 127        q = rint(z / s)       (int8)
    decoded x' = |x| * ((q * s) @ R.T + mu)

Search never rotates stored rows back: for a query ``y``, ``y . x' = |x| * ((y @ R) . (q * s)
+ y . mu)``, so a stored row is searched as ``[q * s, 1]`` and a query as ``[y @ R, y . mu]``
(:func:`rotated_search_rows`, :func:`rotated_search_queries`; width ``d + 1``). Measured on 200k
real SmolLM2-135M residuals (185k distinct; benchmarks/bench_int8_codecs.py): tie-aware
recall@10 against exact float32 search 0.984-0.990 for visual and held-out text queries, at 608
bytes per stored vector with its occurrence table and parameter files (float16: 1,168); on 500k
(458k distinct) 0.980-0.991, composite images at the bar (0.979 on 500 of them,
benchmarks/bench_bank_search.py --only-exact).

``int8`` (legacy, per-dimension midrange offset/scale of the raw rows, ``codec.npy`` ``[2, d]``):
banks written with it open and search as before, but its recall@10 on the same data is only
0.93-0.96, below the 0.98 bar; build new compact banks with ``int8_rotated``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from jaxtyping import Float, Int8

from tl_latentlens.bank.errors import BankError
from tl_latentlens.types import Residuals

__all__ = [
    "CODECS",
    "PARAM_FILES",
    "ROTATION_SEED",
    "decode",
    "decode_rotated",
    "encode",
    "encode_int8",
    "encode_rotated",
    "fit_centre",
    "fit_int8",
    "numpy_dtype",
    "param_files",
    "params_problem",
    "raw_codec",
    "rotated_norms",
    "rotated_search_queries",
    "rotated_search_rows",
    "rotation_matrix",
]

#: Storage codecs: name -> bytes per component.
CODECS = {"float32": 4, "float16": 2, "int8": 1, "int8_rotated": 1}

#: Per-hook parameter files of each codec (beside ``vectors.npy`` and ``norms.npy``).
PARAM_FILES: dict[str, tuple[str, ...]] = {
    "int8": ("codec.npy",),
    "int8_rotated": ("codec_centre.npy", "codec_rotation.npy", "codec_scales.npy"),
}

#: Seed of the ``int8_rotated`` rotation (the matrix is stored too, so readers never rebuild it).
ROTATION_SEED = 0

Params = Float[np.ndarray, "2 d"]  # int8: row 0 = offset (per-dimension centre), row 1 = scale
#: int8_rotated per-row parameters: column 0 = quantisation step ``s``, column 1 = ``|x|``.
RowScales = Float[np.ndarray, "n 2"]


def numpy_dtype(codec: str) -> np.dtype:
    """On-disk numpy dtype of a codec."""
    try:
        return np.dtype(
            {"float32": "<f4", "float16": "<f2", "int8": "i1", "int8_rotated": "i1"}[codec]
        )
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}") from None


def raw_codec(codec: str) -> str:
    """The codec the build's encoding pass writes for a bank stored as ``codec``."""
    return "float32" if codec == "float32" else "float16"


def param_files(codec: str) -> tuple[str, ...]:
    """Names of the per-hook parameter files of ``codec`` (empty for float and unknown codecs:
    a manifest's dtype is validated elsewhere).

    Example:
        >>> param_files("int8_rotated")
        ('codec_centre.npy', 'codec_rotation.npy', 'codec_scales.npy')
    """
    return PARAM_FILES.get(codec, ())


def params_problem(
    codec: str, params: Mapping[str, np.ndarray], n_vectors: int, d: int
) -> str | None:
    """What is wrong with a hook's codec parameter arrays (by file name), if anything."""
    want = {
        "codec.npy": (2, d),
        "codec_centre.npy": (d,),
        "codec_rotation.npy": (d, d),
        "codec_scales.npy": (n_vectors, 2),
    }
    for name in param_files(codec):
        arr = params.get(name)
        if arr is None:
            return f"{name} is missing"
        if arr.shape != want[name] or arr.dtype != np.dtype("<f4"):
            return f"{name} is {arr.dtype} {arr.shape}, expected float32 {want[name]}"
    return None


def encode(x: Residuals, codec: str) -> tuple[np.ndarray, None, np.ndarray]:
    """Encode float32 vectors ``[n, d]`` as raw rows (``float32`` or ``float16``).

    Returns:
        ``(stored, None, norms)``; ``norms`` (float32 ``[n]``) are those of the decoded rows.

    Raises:
        BankError: A value overflows float16 or is not finite.

    Example:
        >>> stored, _, norms = encode(torch.randn(4, 8), "float16")
        >>> stored.dtype
        dtype('float16')
    """
    x = x.detach().to(torch.float32).cpu()
    if not torch.isfinite(x).all():
        raise BankError("the model produced non-finite residuals; cannot store them")
    if codec == "float32":
        stored = x.numpy().astype("<f4", copy=False)
    elif codec == "float16":
        half = x.to(torch.float16)
        if not torch.isfinite(half).all():
            raise BankError(
                f"residual values up to {x.abs().max().item():.4g} overflow float16 "
                "(max 65504); build the bank with dtype='float32'"
            )
        stored = half.numpy()
    else:
        raise ValueError(f"encode() writes raw rows (float32/float16), not {codec!r}")
    stored = np.ascontiguousarray(stored)
    norms = np.linalg.norm(decode(stored, codec), axis=1).astype("<f4")
    return stored, None, norms


# ---- legacy int8: per-dimension offset/scale ---------------------------------------------------
def fit_int8(chunks: object) -> Params:
    """Per-dimension offset (midrange) and scale of float32 chunks ``[n_i, d]`` for ``int8``.

    The offset is the midpoint of each dimension's range and the scale maps the range onto
    [-127, 127], so nothing is clipped.
    """
    lo = hi = None
    for block in chunks:  # type: ignore[attr-defined]
        b_lo, b_hi = block.min(axis=0), block.max(axis=0)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if lo is None:
        raise BankError("cannot fit an int8 codec to zero vectors")
    offset = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
    scale = ((hi.astype(np.float64) - lo) / 254).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.stack([offset, scale]).astype("<f4")


def encode_int8(x: np.ndarray, params: Params) -> np.ndarray:
    """float32 ``[n, d]`` -> int8 with :func:`fit_int8` parameters (rounded, clipped)."""
    q = np.rint((x - params[0]) / params[1])
    return np.clip(q, -127, 127).astype(np.int8)


# ---- int8_rotated: unit rows, centred, rotated, per-row scale ----------------------------------
def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unit rows, norms)`` of float32 ``x``; an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
    return x * inv[:, None], norms


def rotation_matrix(d: int, seed: int = ROTATION_SEED) -> Float[np.ndarray, "d d"]:
    """A random orthogonal ``[d, d]`` float32 matrix: QR of a seeded Gaussian matrix, columns'
    signs fixed so that the result does not depend on the QR routine's sign convention."""
    g = np.random.default_rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    return np.ascontiguousarray(q, dtype="<f4")


def fit_centre(chunks: Iterable[np.ndarray]) -> Float[np.ndarray, " d"]:
    """Mean unit row of float32 chunks ``[n_i, d]`` (the ``int8_rotated`` centre ``mu``)."""
    total, count = None, 0
    for block in chunks:
        u, _ = _unit(block)
        part = u.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        count += u.shape[0]
    if total is None or count == 0:
        raise BankError("cannot fit an int8_rotated codec to zero vectors")
    return (total / count).astype("<f4")


def encode_rotated(
    x: Float[np.ndarray, "n d"],
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
) -> tuple[Int8[np.ndarray, "n d"], RowScales]:
    """float32 rows -> ``(int8 codes, per-row (step, norm))`` of ``int8_rotated``.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        >>> rot = rotation_matrix(8)
        >>> q, sc = encode_rotated(x, fit_centre([x]), rot)
        >>> q.dtype, sc.shape
        (dtype('int8'), (5, 2))
    """
    u, norms = _unit(x)
    z = (u - centre) @ rotation
    step = np.abs(z).max(axis=1) / 127
    step[step == 0] = 1.0
    q = np.clip(np.rint(z / step[:, None]), -127, 127).astype(np.int8)
    return q, np.stack([step, norms], axis=1).astype("<f4")


def _rotated_codes(q: np.ndarray, scales: RowScales) -> tuple[np.ndarray, np.ndarray]:
    """``(scales, q * step)`` in float64: a float32 product's last bits depend on how many rows
    BLAS is given at once, and a vector should decode the same whichever rows come with it."""
    scales = np.asarray(scales, dtype=np.float64)
    return scales, np.asarray(q, dtype=np.float64) * scales[:, :1]


def decode_rotated(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
) -> Float[np.ndarray, "n d"]:
    """``int8_rotated`` codes -> float32 vectors in the model's space: ``|x| ((q s) R^T + mu)``."""
    scales, z = _rotated_codes(q, scales)
    out = z @ np.asarray(rotation, dtype=np.float64).T
    out += centre
    out *= scales[:, 1:]
    return out.astype(np.float32)


def rotated_norms(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
) -> Float[np.ndarray, " n"]:
    """Norms of the :func:`decode_rotated` vectors without rotating them back (``R`` is
    orthogonal: ``|(q s) R^T + mu|^2 = |q s|^2 + 2 (q s) . (mu R) + |mu|^2``), float32."""
    scales, z = _rotated_codes(q, scales)
    mu = np.asarray(centre, dtype=np.float64)
    mu_r = mu @ np.asarray(rotation, dtype=np.float64)
    sq = np.einsum("nd,nd->n", z, z) + 2 * (z @ mu_r) + mu @ mu
    return (np.sqrt(np.maximum(sq, 0.0)) * scales[:, 1]).astype(np.float32)


def rotated_search_rows(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    inv_norms: Float[np.ndarray, " n"],
    out: Float[np.ndarray, "n w"] | None = None,
) -> Float[np.ndarray, "n w"]:
    """Stored ``int8_rotated`` rows as unit rows of the search space ``[q s, 1] |x| / norm``
    (width ``d + 1``): their product with :func:`rotated_search_queries` is the cosine of the
    query with the decoded vector, without rotating any stored row back."""
    scales = np.asarray(scales, dtype=np.float32)
    f = scales[:, 1] * np.asarray(inv_norms, dtype=np.float32)  # 1 / |decoded unit row|
    n, d = q.shape
    if out is None:
        out = np.empty((n, d + 1), dtype=np.float32)
    np.multiply(q, (scales[:, 0] * f)[:, None], out=out[:, :d], casting="unsafe")
    out[:, d] = f
    return out


def rotated_search_queries(
    y: Float[np.ndarray, "m d"],
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
) -> Float[np.ndarray, "m w"]:
    """Queries in the ``int8_rotated`` search space: ``[y @ R, y . mu]`` (width ``d + 1``)."""
    y = np.asarray(y, dtype=np.float32)
    out = np.empty((y.shape[0], y.shape[1] + 1), dtype=np.float32)
    np.matmul(y, np.asarray(rotation, dtype=np.float32), out=out[:, :-1])
    out[:, -1] = y @ np.asarray(centre, dtype=np.float32)
    return out


def decode(
    stored: np.ndarray, codec: str, params: Params | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Stored rows -> float32 ``[n, d]`` (a new array unless ``out`` is given).

    ``int8_rotated`` needs per-row scales: decode it with :func:`decode_rotated`.

    Example:
        >>> decode(np.ones((1, 4), np.float16), "float16")
        array([[1., 1., 1., 1.]], dtype=float32)
    """
    if codec == "float16":
        # torch widens float16 with SIMD (numpy's conversion is ~4x slower on our CPUs).
        res = torch.from_numpy(np.array(stored, dtype=np.float16)).to(torch.float32).numpy()
    elif codec == "float32":
        res = np.array(stored, dtype=np.float32)  # a copy: callers scale it in place
    elif codec == "int8":
        if params is None:
            raise ValueError("the int8 codec needs its offset/scale parameters")
        res = np.asarray(stored, dtype=np.float32) * params[1] + params[0]
    elif codec == "int8_rotated":
        raise ValueError("int8_rotated rows need their per-row scales: use decode_rotated()")
    else:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if out is not None:
        out[...] = res
        return out
    return res
