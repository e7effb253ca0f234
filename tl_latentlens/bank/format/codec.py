"""Vector storage codecs: ``float32``, ``float16`` and ``int8_pca`` (what new banks are built
with, :data:`~tl_latentlens.bank.format.config.STORAGE_DTYPES`), and ``int8_rotated`` and the
legacy ``int8``, which banks built before keep: they are read and searched as always, but a
build asking for them is refused (:class:`~tl_latentlens.bank.format.config.RetiredCodecError`).

Every codec decodes to float32. A build always encodes the model's residuals as *raw* rows
(float32 or float16, :func:`encode`); the 1-byte codecs are applied afterwards per hook, because
their parameters are statistics of the whole hook. The norm of each *stored* (decoded) vector
is kept beside it, so cosine similarities computed from the stored values are exact for what
is stored.

``int8_rotated`` (1 byte per component): each row ``x`` is made a unit row ``u = x / |x|``,
centred on the hook's mean unit row ``mu`` and turned by a fixed random orthogonal matrix ``R``
(which spreads the residual stream's few huge outlier dimensions over all dimensions), then
quantised with one scale per row::

    z = (u - mu) @ R        s = max|z| / 127        q = rint(z / s)       (int8)
    decoded x' = |x| * ((q * s) @ R.T + mu)

Search never rotates stored rows back: for a query ``y``, ``y . x' = |x| * ((y @ R) . (q * s)
+ y . mu)``, so a stored row is searched as ``[q * s, 1]`` and a query as ``[y @ R, y . mu]``
(:func:`rotated_search_rows`, :func:`rotated_search_queries`; width ``d + 1``). On real
SmolLM2-135M residuals its tie-aware recall@10 against exact float32 search sits at the 0.98
bar for composite images (benchmarks/bench_int8_codecs.py, benchmarks/bench_bank_search.py
--only-exact; see benchmarks/README.md).

``int8_pca`` (the compact codec to use: ``int8_rotated`` plus ``P`` float16 principal
coefficients per row, default ``P = 64``): the centred unit row's coefficients on the hook's
top-``P`` principal directions ``V`` (``[P, d]``, orthonormal rows, fitted on a seeded sample of
the hook's rows, :func:`fit_components`) are stored in float16, and only what they leave is
rotated and quantised::

    c = u - mu     a = fp16(c @ V.T)     z = (c - a @ V) @ R     q, s as above
    decoded x' = |x| * ((q * s) @ R.T + a @ V + mu)

The residual absorbs the coefficients' float16 rounding, and the int8 step is set by the
residual alone, which is several times smaller than the whole centred row. A stored row is
searched as ``[q * s, a, 1]`` and a query as ``[y @ R, y @ V.T, y . mu]`` (width
``d + P + 1``). On real SmolLM2 residuals ``P = 64`` clears the 0.98 recall@10 bar for every
query set, where ``int8_rotated`` does not always, in fewer bytes per stored vector than
float16; larger ``P`` buys little (benchmarks/bench_int8_codecs.py; see benchmarks/README.md).

``int8`` (legacy, per-dimension midrange offset/scale of the raw rows, ``codec.npy`` ``[2, d]``):
banks written with it open and search as before, but its recall@10 on the same data is below
the 0.98 bar (see benchmarks/README.md); build new compact banks with ``int8_pca``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from jaxtyping import Float, Float16, Int8

from tl_latentlens.bank.errors import BankError
from tl_latentlens.types import Residuals

__all__ = [
    "CODECS",
    "PARAM_FILES",
    "PCA_COMPONENTS",
    "PCA_SAMPLE",
    "PCA_SEED",
    "ROTATION_SEED",
    "check_components",
    "decode",
    "decode_rotated",
    "default_components",
    "encode",
    "encode_int8",
    "encode_pca",
    "encode_rotated",
    "fit_centre",
    "fit_components",
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

#: Storage codecs a bank may hold (read and searched): name -> bytes per component. New builds
#: offer only :data:`~tl_latentlens.bank.format.config.STORAGE_DTYPES`.
CODECS = {"float32": 4, "float16": 2, "int8": 1, "int8_rotated": 1, "int8_pca": 1}

#: Per-hook parameter files of each codec (beside ``vectors.npy`` and ``norms.npy``).
PARAM_FILES: dict[str, tuple[str, ...]] = {
    "int8": ("codec.npy",),
    "int8_rotated": ("codec_centre.npy", "codec_rotation.npy", "codec_scales.npy"),
    "int8_pca": (
        "codec_centre.npy",
        "codec_rotation.npy",
        "codec_scales.npy",
        "codec_components.npy",
        "codec_coeffs.npy",
    ),
}

#: Seed of the ``int8_rotated`` rotation (the matrix is stored too, so readers never rebuild it).
ROTATION_SEED = 0

#: ``int8_pca``: principal directions kept per hook (capped for narrow models, see
#: :func:`default_components`), and rows of the seeded sample they are fitted on.
PCA_COMPONENTS = 64
PCA_SAMPLE = 131072
#: Seed of the sample's choice (the directions are stored, so readers never refit them).
PCA_SEED = 0

Params = Float[np.ndarray, "2 d"]  # int8: row 0 = offset (per-dimension centre), row 1 = scale
#: int8_rotated per-row parameters: column 0 = quantisation step ``s``, column 1 = ``|x|``.
RowScales = Float[np.ndarray, "n 2"]
#: int8_pca: float16 principal coefficients of each row, and the principal directions.
Coeffs = Float16[np.ndarray, "n p"]
Components = Float[np.ndarray, "p d"]

_NUMPY_DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "int8": "i1",
    "int8_rotated": "i1",
    "int8_pca": "i1",
}


def numpy_dtype(codec: str) -> np.dtype:
    """On-disk numpy dtype of a codec."""
    try:
        return np.dtype(_NUMPY_DTYPES[codec])
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
    comp = params.get("codec_components.npy")
    p = int(comp.shape[0]) if comp is not None and comp.ndim == 2 else 0
    want = {
        "codec.npy": ((2, d), "<f4"),
        "codec_centre.npy": ((d,), "<f4"),
        "codec_rotation.npy": ((d, d), "<f4"),
        "codec_scales.npy": ((n_vectors, 2), "<f4"),
        "codec_components.npy": ((p, d), "<f4"),
        "codec_coeffs.npy": ((n_vectors, p), "<f2"),
    }
    for name in param_files(codec):
        arr = params.get(name)
        if arr is None:
            return f"{name} is missing"
        shape, dtype = want[name]
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            return f"{name} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}"
    if codec == "int8_pca" and not 0 < p < d:
        return f"codec_components.npy holds {p} directions, expected 1 .. {d - 1}"
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


# ---- int8_rotated / int8_pca: unit rows, centred, (principal part,) rotated, per-row scale ------
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
    """Mean unit row of float32 chunks ``[n_i, d]`` (the ``int8_rotated``/``int8_pca`` centre
    ``mu``)."""
    total, count = None, 0
    for block in chunks:
        u, _ = _unit(block)
        part = u.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        count += u.shape[0]
    if total is None or count == 0:
        raise BankError("cannot fit an int8_rotated codec to zero vectors")
    return (total / count).astype("<f4")


def default_components(d: int) -> int:
    """``int8_pca``'s number of principal directions for width ``d``: :data:`PCA_COMPONENTS`,
    at most a quarter of ``d`` (narrow test models).

    Example:
        >>> default_components(576), default_components(64)
        (64, 16)
    """
    return max(1, min(PCA_COMPONENTS, d // 4))


def check_components(n_components: int, d: int) -> None:
    """Raise :class:`BankError` (a ValueError) unless ``1 <= n_components < d``."""
    ok = isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool)
    if not ok or not 0 < n_components < d:
        raise BankError(
            f"int8_pca needs 1 <= n_components < d_model = {d}, got {n_components!r}; pass "
            f"fewer principal directions (default {default_components(d)}) or use int8_rotated"
        )


def fit_components(
    x: Float[np.ndarray, "n d"], centre: Float[np.ndarray, " d"], n_components: int
) -> Components:
    """Top-``n_components`` principal directions ``[P, d]`` (orthonormal float32 rows, largest
    variance first) of the unit rows of ``x`` centred on ``centre``.

    ``x`` is typically a seeded sample of the hook's rows (:data:`PCA_SAMPLE`). Each
    direction's sign is fixed (its largest component positive) so the result does not depend
    on the eigen-solver's sign convention.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
        >>> fit_components(x, fit_centre([x]), 3).shape
        (3, 8)
    """
    d = int(np.shape(x)[1])
    check_components(n_components, d)
    u, _ = _unit(x)
    c = u - np.asarray(centre, dtype=np.float32)
    # eigh of the d x d scatter matrix: cheaper than an SVD of the [n, d] sample for n >> d.
    # The product in float32 (much faster than float64 on real residual rows, the same
    # directions to 1e-8; figures in benchmarks/README.md), the eigen-solver in float64.
    _, vecs = np.linalg.eigh((c.T @ c).astype(np.float64))
    top = vecs[:, ::-1][:, :n_components].T
    top *= np.sign(top[np.arange(n_components), np.abs(top).argmax(axis=1)])[:, None]
    return np.ascontiguousarray(top, dtype="<f4")


def _quantise(z: np.ndarray, norms: np.ndarray) -> tuple[Int8[np.ndarray, "n d"], RowScales]:
    """Rotated rows -> ``(int8 codes, per-row (step, norm))``: one absmax scale per row."""
    step = np.abs(z).max(axis=1) / 127
    step[step == 0] = 1.0
    q = np.clip(np.rint(z / step[:, None]), -127, 127).astype(np.int8)
    return q, np.stack([step, norms], axis=1).astype("<f4")


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
    return _quantise((u - centre) @ rotation, norms)


def encode_pca(
    x: Float[np.ndarray, "n d"],
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
    components: Components,
) -> tuple[Int8[np.ndarray, "n d"], RowScales, Coeffs]:
    """float32 rows -> ``(int8 codes, per-row (step, norm), float16 coefficients)`` of
    ``int8_pca``: the residual left by the float16-rounded coefficients is what is quantised.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        >>> mu = fit_centre([x])
        >>> q, sc, a = encode_pca(x, mu, rotation_matrix(8), fit_components(x, mu, 2))
        >>> q.dtype, sc.shape, a.dtype, a.shape
        (dtype('int8'), (5, 2), dtype('float16'), (5, 2))
    """
    u, norms = _unit(x)
    c = u - centre
    coeffs = (c @ np.asarray(components, dtype=np.float32).T).astype("<f2")
    c -= coeffs.astype(np.float32) @ components
    q, scales = _quantise(c @ rotation, norms)
    return q, scales, coeffs


def _rotated_codes(q: np.ndarray, scales: RowScales) -> tuple[np.ndarray, np.ndarray]:
    """``(scales, q * step)`` in float64: a float32 product's last bits depend on how many rows
    BLAS is given at once, and a vector should decode the same whichever rows come with it."""
    scales = np.asarray(scales, dtype=np.float64)
    return scales, np.asarray(q, dtype=np.float64) * scales[:, :1]


def _principal(coeffs: Coeffs, components: Components) -> np.ndarray:
    """``a @ V`` in float64 (the principal part of ``int8_pca`` rows, in the model's space)."""
    return np.asarray(coeffs, dtype=np.float64) @ np.asarray(components, dtype=np.float64)


def decode_rotated(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
    coeffs: Coeffs | None = None,
    components: Components | None = None,
) -> Float[np.ndarray, "n d"]:
    """``int8_rotated`` codes -> float32 vectors in the model's space: ``|x| ((q s) R^T + mu)``;
    with ``int8_pca``'s ``coeffs`` and ``components`` ``|x| ((q s) R^T + a V + mu)``."""
    scales, z = _rotated_codes(q, scales)
    out = z @ np.asarray(rotation, dtype=np.float64).T
    if coeffs is not None:
        out += _principal(coeffs, components)
    out += centre
    out *= scales[:, 1:]
    return out.astype(np.float32)


def rotated_norms(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
    coeffs: Coeffs | None = None,
    components: Components | None = None,
) -> Float[np.ndarray, " n"]:
    """Norms of the :func:`decode_rotated` vectors without rotating them back (``R`` is
    orthogonal: ``|(q s) R^T + t|^2 = |q s|^2 + 2 (q s) . (t R) + |t|^2`` for the row's
    offset ``t = mu`` (``mu + a V`` with ``int8_pca`` coefficients)), float32."""
    scales, z = _rotated_codes(q, scales)
    rot = np.asarray(rotation, dtype=np.float64)
    mu = np.asarray(centre, dtype=np.float64)
    if coeffs is None:
        cross, tail = z @ (mu @ rot), mu @ mu
    else:
        v = np.asarray(components, dtype=np.float64)
        t = _principal(coeffs, v) + mu
        # t R = a (V R) + mu R: [P, d] x [d, d] once instead of rotating every row
        t_rot = _principal(coeffs, v @ rot) + mu @ rot
        cross, tail = np.einsum("nd,nd->n", z, t_rot), np.einsum("nd,nd->n", t, t)
    sq = np.einsum("nd,nd->n", z, z) + 2 * cross + tail
    return (np.sqrt(np.maximum(sq, 0.0)) * scales[:, 1]).astype(np.float32)


def rotated_search_rows(
    q: Int8[np.ndarray, "n d"],
    scales: RowScales,
    inv_norms: Float[np.ndarray, " n"],
    out: Float[np.ndarray, "n w"] | None = None,
    coeffs: Coeffs | None = None,
) -> Float[np.ndarray, "n w"]:
    """Stored rows as unit rows of the search space: ``[q s, 1] |x| / norm`` for
    ``int8_rotated`` (width ``d + 1``), ``[q s, a, 1] |x| / norm`` with ``int8_pca``'s
    ``coeffs`` (width ``d + P + 1``). Their product with :func:`rotated_search_queries` is the
    cosine of the query with the decoded vector, without rotating any stored row back."""
    scales = np.asarray(scales, dtype=np.float32)
    f = scales[:, 1] * np.asarray(inv_norms, dtype=np.float32)  # 1 / |decoded unit row|
    n, d = q.shape
    p = 0 if coeffs is None else coeffs.shape[1]
    if out is None:
        out = np.empty((n, d + p + 1), dtype=np.float32)
    np.multiply(q, (scales[:, 0] * f)[:, None], out=out[:, :d], casting="unsafe")
    if coeffs is not None:
        np.multiply(coeffs, f[:, None], out=out[:, d : d + p], casting="unsafe")
    out[:, d + p] = f
    return out


def rotated_search_queries(
    y: Float[np.ndarray, "m d"],
    centre: Float[np.ndarray, " d"],
    rotation: Float[np.ndarray, "d d"],
    components: Components | None = None,
) -> Float[np.ndarray, "m w"]:
    """Queries in the search space: ``[y @ R, y . mu]`` for ``int8_rotated`` (width ``d + 1``),
    ``[y @ R, y @ V.T, y . mu]`` with ``int8_pca``'s ``components`` (width ``d + P + 1``)."""
    y = np.asarray(y, dtype=np.float32)
    d = y.shape[1]
    p = 0 if components is None else components.shape[0]
    out = np.empty((y.shape[0], d + p + 1), dtype=np.float32)
    np.matmul(y, np.asarray(rotation, dtype=np.float32), out=out[:, :d])
    if components is not None:
        np.matmul(y, np.asarray(components, dtype=np.float32).T, out=out[:, d : d + p])
    out[:, -1] = y @ np.asarray(centre, dtype=np.float32)
    return out


def decode(
    stored: np.ndarray, codec: str, params: Params | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Stored rows -> float32 ``[n, d]`` (a new array unless ``out`` is given).

    ``int8_rotated`` and ``int8_pca`` need per-row scales: decode it with :func:`decode_rotated`.

    Example:
        >>> decode(np.ones((1, 4), np.float16), "float16")
        array([[1., 1., 1., 1.]], dtype=float32)
    """
    if codec == "float16":
        # torch widens float16 with SIMD (numpy's conversion is slower; benchmarks/README.md).
        res = torch.from_numpy(np.array(stored, dtype=np.float16)).to(torch.float32).numpy()
    elif codec == "float32":
        res = np.array(stored, dtype=np.float32)  # a copy: callers scale it in place
    elif codec == "int8":
        if params is None:
            raise ValueError("the int8 codec needs its offset/scale parameters")
        res = np.asarray(stored, dtype=np.float32) * params[1] + params[0]
    elif codec in ("int8_rotated", "int8_pca"):
        raise ValueError(f"{codec} rows need their per-row scales: use decode_rotated()")
    else:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if out is not None:
        out[...] = res
        return out
    return res
