"""Test data shared by the kernel tests: matrices of the kinds of data that break quantizers, and imatrices.

Every generator is seeded, returns float32 and only finite values (the kernels reject NaN/Inf up front).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
FMAX = 3.0e38  # clip huge samples into float32's range


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.clip(a, -FMAX, FMAX), dtype=F32)


def overflow_rows(rng: np.random.Generator, n: int, rows: int = 2) -> dict[str, np.ndarray]:
    """Magnitudes at which ggml's float32 arithmetic overflows: x^2 beyond ~1.8e19, x^3 beyond ~7e12, sums and
    scales beyond 3.4e38.  Whole rows at 1e20/1e30/1e37, and rows whose 16-value groups mix magnitudes from 1e10
    to 1e20 (some group scales overflow to NaN/inf while their neighbours stay finite)."""
    c = {f"normal*{s:g}": rng.standard_normal((rows, n)) * s for s in (1e20, 1e30, 1e37)}
    mags = 10.0 ** rng.uniform(10, 20, (rows, n // 16, 1))
    c["mixed_groups_1e10..1e20"] = (rng.standard_normal((rows, n // 16, 16)) * mags).reshape(rows, n)
    return {k: _f32(v) for k, v in c.items()}


def mixed_cases(n: int, seed: int = 20240607) -> np.ndarray:
    """One (rows, n) matrix, n a multiple of 256: each row one kind of data, the last rows mix kinds block by
    block (for the 13-type oracle sweep)."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal((4, n)) * s for s in (1e-3, 1.0, 1e3)]
    rows.append(rng.standard_t(2, (4, n)))                                  # heavy tails
    rows.append(np.zeros((1, n)))                                           # all-zero blocks
    const = np.repeat(rng.uniform(-2, 2, n // 32), 32)[None]                # constant 32-blocks
    const[0, :256] = 0.375                                                  # a constant super-block
    rows.append(const)
    rows.append(rng.standard_normal((2, n)) * 1e-15)                        # near GROUP_MAX_EPS
    rows.append(rng.standard_normal((1, n)) * np.repeat([3e-16, 2e-15, 8e-16, 1e-14], n // 4))
    rows.append(np.abs(rng.standard_normal((1, n))) + 0.25)                 # all positive
    rows.append(-np.abs(rng.standard_normal((1, n))) - 0.25)                # all negative
    rows.append(np.where(np.arange(n) % 2, -1.0, 1.0)[None] * rng.uniform(0.5, 1.5, (1, n)))
    rows.append(rng.integers(-3, 4, (2, n)) * 0.125)                        # few levels: exact ties
    kinds = [np.zeros(32), np.full(32, -0.7), rng.standard_normal(32) * 1e-15, rng.standard_t(2, 32) * 50,
             rng.standard_normal(32), np.where(rng.random(32) < 0.5, 0.0, 1e-3), rng.standard_normal(32) * 1e3]
    rows.append(np.stack([np.concatenate([kinds[(r + b) % len(kinds)] for b in range(n // 32)])
                          for r in range(4)]))                              # rows mixing all of the above
    rows.extend(overflow_rows(rng, n, rows=1).values())
    return _f32(np.concatenate(rows))


def kquant_cases(n: int, seed: int = 2323) -> dict[str, np.ndarray]:
    """Named (rows, n) matrices for the super-block types, n a multiple of 256 (edge cases of the searches:
    fp16 scales that underflow or overflow, ties, constant and all-zero groups and sub-blocks, ...)."""
    rng = np.random.default_rng(seed)
    c: dict[str, np.ndarray] = {}
    # 1e-7/1e-5: fp16 d underflows / is subnormal; 1e6: fp16 d overflows to inf; 1e15: x^3 overflows (NaN sums)
    for scale in (1e-7, 1e-5, 1e-3, 0.02, 1.0, 300.0, 1e6, 1e15):
        c[f"normal*{scale:g}"] = rng.standard_normal((8, n)) * scale
    c["student_t2"] = rng.standard_t(2, (16, n))
    c["student_t1"] = rng.standard_t(1, (8, n)) * 0.05        # Cauchy: huge outliers in most blocks
    c["tiny_1e-15"] = rng.standard_normal((4, n)) * 1e-15      # groups on both sides of GROUP_MAX_EPS
    c["threshold_1e-15"] = rng.choice(
        np.array([1e-15, np.nextafter(F32(1e-15), F32(0)), -1e-15, 0.0], F32), (4, n))
    c["positive"] = np.abs(rng.standard_normal((4, n))) + 0.5  # min > 0 clamps to 0
    c["negative"] = -np.abs(rng.standard_normal((4, n))) - 0.5
    c["mixed_signs"] = np.where(rng.random((4, n)) < 0.5, -1, 1) * rng.uniform(0.5, 2.0, (4, n))
    c["alternating"] = np.tile([1.0, -1.0], (4, n // 2)) * rng.uniform(0.9, 1.1, (4, n))
    c["sparse"] = rng.standard_normal((4, n)) * (rng.random((4, n)) < 0.1)
    c["few_levels"] = rng.integers(-4, 5, (8, n)) * 0.25       # +a/-a ties, exact ties in the searches
    c["special"] = _special(rng, n)
    c["subnormal"] = c["special"][4:5] * 1e-39                  # iscale overflows to inf
    c["subnormal_pos"] = np.abs(c["special"][4:5]) * 1e-39      # the same with min clamped to 0
    huge = c["special"][5:6].copy()
    huge[0, :64] = [3e38, -3e38] * 32                           # max - min overflows to inf
    c["max_minus_min_inf"] = huge
    c.update(overflow_rows(rng, n))
    return {k: _f32(v) for k, v in c.items()}


def _special(rng: np.random.Generator, n: int) -> np.ndarray:
    s = rng.standard_normal((12, n))
    s[0] = 0.0                                  # all-zero row
    s[1, :256] = 0.0                            # all-zero super-block
    s[1, 256:288] = 0.0                         # all-zero 16-group and 32-sub-block inside a normal super-block
    s[2] = 0.75                                 # constant row
    s[3, 512:544] = -3.0                        # constant negative sub-block
    s[3, 768:1024] = -2.0                       # constant negative super-block
    s[4, :256] *= 1e-15                         # tiny super-block next to normal ones
    s[5, ::7] = 40.0                            # strong positive outliers
    s[6, :32] = np.linspace(-1, 1, 32)          # evenly spaced
    s[7, 256:512] = -0.0                        # negative zeros
    s[8, ::16] = -50.0                          # one large negative per group
    s[9, 16:256] *= 1e-4                        # one dominant group: the others get tiny 4/6-bit scales
    s[10, :256] = 1e-3 * np.arange(256) % 7     # constant groups at different levels
    s[11, 1::2] = -s[11, ::2]                   # exact +a/-a pairs
    return s


def imatrices(n: int, seed: int = 77) -> dict[str, np.ndarray | None]:
    """Importance vectors (one weight per column) of the kinds ggml's weighted encoders must survive."""
    rng = np.random.default_rng(seed)
    with_zeros = rng.random(n).astype(F32) * 3
    with_zeros[rng.random(n) < 0.3] = 0.0
    with_zeros[:32] = 0.0                         # a whole block/sub-block/group without importance
    with_zeros[n // 2:n // 2 + 256] = 0.0         # a whole super-block without importance
    huge = (rng.random(n) * 2 + 0.1).astype(F32)
    huge[rng.random(n) < 0.2] = 1e33              # w*x overflows: NaN group scales next to finite ones
    huge[32:48] = 3e38
    return {"none": None,
            "random": (rng.random(n) ** 2 * 10 + 1e-3).astype(F32),
            "zeros": with_zeros,
            "ones": np.ones(n, F32),
            "tiny": (rng.random(n) * 1e-30).astype(F32),
            "huge": huge}
