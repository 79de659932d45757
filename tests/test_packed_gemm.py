"""Tests of src/packed_gemm.c (packed small-M GEMM) against NumPy.

The C file is compiled here into a throwaway shared library (``cc -O3 -shared -fPIC``,
no -march, as the package builds it) and called through ctypes, so these tests need
only a C compiler and the source tree, not the built extension. Every kernel the CPU
supports is tested (plain C, AVX2, AVX-512), selected through
clstm_packed_gemm_select.
"""

import ctypes
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "packed_gemm.c"
NR = {np.float32: 32, np.float64: 16}
SUFFIX = {np.float32: "f32", np.float64: "f64"}
ISAS = {"generic": 0, "avx2": 1, "avx512": 2}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cc = os.environ.get("CC", "cc").split()
    if shutil.which(cc[0]) is None:
        pytest.skip("no C compiler")
    if not SOURCE.exists():
        pytest.skip("needs the source tree (src/packed_gemm.c)")
    out = tmp_path_factory.mktemp("packed_gemm") / "libpacked_gemm.so"
    subprocess.run(cc + ["-O3", "-shared", "-fPIC", str(SOURCE), "-o", str(out)], check=True)
    so = ctypes.CDLL(str(out))
    i, p, sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    for suf in ("f32", "f64"):
        getattr(so, f"clstm_packed_size_{suf}").argtypes = [i, i]
        getattr(so, f"clstm_packed_size_{suf}").restype = sz
        getattr(so, f"clstm_pack_{suf}").argtypes = [i, i, p, i, i, p]
        getattr(so, f"clstm_pack_{suf}").restype = None
        getattr(so, f"clstm_packed_gemm_{suf}").argtypes = [i, i, i, p, i, p, p, i, i]
        getattr(so, f"clstm_packed_gemm_{suf}").restype = None
        getattr(so, f"clstm_packed_gemm_at_{suf}").argtypes = [i, i, i, p, i, p, p, i, i]
        getattr(so, f"clstm_packed_gemm_at_{suf}").restype = None
        getattr(so, f"clstm_pack_cat_{suf}").argtypes = [i, i, i, p, i, p, i, i, p]
        getattr(so, f"clstm_pack_cat_{suf}").restype = None
        getattr(so, f"clstm_packed_gemm2_{suf}").argtypes = [i, i, i, i, p, i, p, i, p, p, i, i]
        getattr(so, f"clstm_packed_gemm2_{suf}").restype = None
    so.clstm_packed_gemm_select.argtypes = [i]
    so.clstm_packed_gemm_select.restype = i
    so.clstm_packed_gemm_isa.restype = i
    so.clstm_packed_gemm_isa_name.restype = ctypes.c_char_p
    yield so
    so.clstm_packed_gemm_select(-1)


@pytest.fixture(params=list(ISAS))
def isa(request, lib):
    """Each kernel in turn; those the CPU (or a non-x86 build) lacks are skipped."""
    if lib.clstm_packed_gemm_select(ISAS[request.param]) < 0:
        pytest.skip(f"{request.param} kernel not available here")
    yield request.param
    lib.clstm_packed_gemm_select(-1)


def pack(lib, P, dtype, src_is_nk, ld_pad=0):
    """Pack P (K × N) through the library, from P itself or from Pᵀ (src_is_nk)."""
    K, N = P.shape
    src = P.T if src_is_nk else P
    buf = np.full((src.shape[0], src.shape[1] + ld_pad), np.nan, dtype=dtype)
    buf[:, : src.shape[1]] = src
    size = getattr(lib, f"clstm_packed_size_{SUFFIX[dtype]}")(K, N)
    packed = np.full(max(size, 1), np.nan, dtype=dtype)   # NaN: unwritten slots would show
    getattr(lib, f"clstm_pack_{SUFFIX[dtype]}")(K, N, buf.ctypes.data, buf.shape[1],
                                                 int(src_is_nk), packed.ctypes.data)
    return packed[:size]


def packed_gemm(lib, A, packed, C, K, N, accumulate):
    """C[:, :N] (+)= A[:, :K] · P, with A and C possibly wider than K and N (lda, ldc)."""
    M = C.shape[0]
    getattr(lib, f"clstm_packed_gemm_{SUFFIX[C.dtype.type]}")(
        M, K, N, A.ctypes.data, A.shape[1], packed.ctypes.data, C.ctypes.data, C.shape[1],
        int(accumulate))


def check_case(lib, rng, dtype, M, K, N, src_is_nk, accumulate, pad_a=0, pad_c=0, pad_src=0):
    P = rng.standard_normal((K, N)).astype(dtype)
    packed = pack(lib, P, dtype, src_is_nk, pad_src)
    # Padding columns of A hold NaN: reading past column K would poison the result.
    A = np.full((M, K + pad_a), np.nan, dtype=dtype)
    A[:, :K] = rng.standard_normal((M, K))
    # Padding columns of C hold a sentinel: writing past column N would change it.
    C = np.full((M, N + pad_c), 7.0, dtype=dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    C[:, :N] = C0
    packed_gemm(lib, A, packed, C, K, N, accumulate)

    A64, P64 = A[:, :K].astype(np.float64), P.astype(np.float64)
    expected = A64 @ P64 + (C0 if accumulate else 0)
    # Error bound of a K-term dot product in any summation order, plus the final add.
    magnitude = np.abs(A64) @ np.abs(P64) + (np.abs(C0) if accumulate else 0)
    eps = np.finfo(dtype).eps
    bound = 2 * eps * (K + 2) * magnitude + np.finfo(dtype).tiny
    err = np.abs(C[:, :N] - expected)
    where = f"{dtype.__name__} M={M} K={K} N={N} nk={src_is_nk} acc={accumulate}"
    assert np.all(err <= bound), f"{where}: max excess {np.max(err - bound)}"
    assert np.all(C[:, N:] == 7.0), f"{where}: wrote past column N"


def check_case_at(lib, rng, dtype, M, K, N, accumulate, pad_a=0, pad_c=0, pad_src=0):
    """C (M × N) (+)= Aᵀ · P with A stored K × M (clstm_packed_gemm_at_*)."""
    P = rng.standard_normal((K, N)).astype(dtype)
    packed = pack(lib, P, dtype, 0, pad_src)
    # Padding columns of A (past M) hold NaN: reading them would poison the result.
    A = np.full((K, M + pad_a), np.nan, dtype=dtype)
    A[:, :M] = rng.standard_normal((K, M))
    C = np.full((M, N + pad_c), 7.0, dtype=dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    C[:, :N] = C0
    getattr(lib, f"clstm_packed_gemm_at_{SUFFIX[dtype]}")(
        M, K, N, A.ctypes.data, A.shape[1], packed.ctypes.data, C.ctypes.data, C.shape[1],
        int(accumulate))

    A64, P64 = A[:, :M].astype(np.float64), P.astype(np.float64)
    expected = A64.T @ P64 + (C0 if accumulate else 0)
    magnitude = np.abs(A64.T) @ np.abs(P64) + (np.abs(C0) if accumulate else 0)
    eps = np.finfo(dtype).eps
    bound = 2 * eps * (K + 2) * magnitude + np.finfo(dtype).tiny
    err = np.abs(C[:, :N] - expected)
    where = f"at {dtype.__name__} M={M} K={K} N={N} acc={accumulate} lda={A.shape[1]}"
    assert np.all(err <= bound), f"{where}: max excess {np.max(err - bound)}"
    assert np.all(C[:, N:] == 7.0), f"{where}: wrote past column N"


def test_packed_size(lib):
    for dtype, nr in NR.items():
        size = getattr(lib, f"clstm_packed_size_{SUFFIX[dtype]}")
        assert size(5, 1) == 5 * nr
        assert size(5, nr) == 5 * nr
        assert size(5, nr + 1) == 10 * nr
        assert size(0, 7) == 0 and size(7, 0) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("src_is_nk", [0, 1])
def test_pack_layout(lib, dtype, src_is_nk):
    """packed[(p·K + k)·NR + j] = P[k, p·NR + j], zero past N, from either source."""
    rng = np.random.default_rng(1)
    nr = NR[dtype]
    K, N = 7, 2 * nr + 5
    P = rng.standard_normal((K, N)).astype(dtype)
    packed = pack(lib, P, dtype, src_is_nk, ld_pad=3)
    panels = -(-N // nr)
    padded = np.zeros((K, panels * nr), dtype=dtype)
    padded[:, :N] = P
    expected = padded.reshape(K, panels, nr).transpose(1, 0, 2).ravel()
    np.testing.assert_array_equal(packed, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_edges(lib, isa, dtype):
    """Every M up to two row blocks, N across panel edges, tiny K."""
    rng = np.random.default_rng(2)
    nr = NR[dtype]
    for M in range(1, 18):
        for N in (1, 2, nr // 2 - 1, nr // 2 + 1, nr - 1, nr, nr + 1, 2 * nr + 3, 4 * nr + 1):
            for K in (1, 2, 3, 5):
                check_case(lib, rng, dtype, M, K, N, (M + N) % 2, (M + K) % 2,
                           pad_a=M % 3, pad_c=N % 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_shapes(lib, isa, dtype):
    """Random sizes M 1..70, K 1..600 (and some past the k-block size), N 1..700, both
    source layouts, accumulate on and off, padded leading dimensions."""
    rng = np.random.default_rng(3 if dtype is np.float32 else 4)
    for case in range(30):
        M = int(rng.integers(1, 71))
        K = int(rng.integers(1, 601)) if case % 8 else int(rng.integers(900, 2100))
        N = int(rng.integers(1, 701))
        check_case(lib, rng, dtype, M, K, N, int(rng.integers(2)), int(rng.integers(2)),
                   pad_a=int(rng.integers(0, 9)), pad_c=int(rng.integers(0, 9)),
                   pad_src=int(rng.integers(0, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pow2_lda(lib, isa, dtype):
    """Row strides of A a multiple of 1 KiB with M > 8 (several k blocks, a ragged last
    row block and panel, accumulate on and off)."""
    rng = np.random.default_rng(7)
    itemsize = np.dtype(dtype).itemsize
    for M, K, N, lda in ((40, 1000, 300, 1024), (40, 1100, 300, 2048), (40, 1000, 300, 2048),
                         (17, 512, 1000, 512), (9, 128, 70, 128), (64, 2048, 33, 2048)):
        if (lda * itemsize) % 1024:
            lda *= 2
        for accumulate in (0, 1):
            check_case(lib, rng, dtype, M, K, N, accumulate, accumulate, pad_a=lda - K,
                       pad_c=int(rng.integers(0, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_shapes(lib, isa, dtype):
    """The two uses: forward G += h·W_hhᵀ (P = W_hhᵀ packed from W_hh) and backward
    dh += da·W_hh (P = W_hh), H = 64, at the per-thread row counts."""
    rng = np.random.default_rng(5)
    H = 64
    for M in (1, 2, 4, 8, 16, 33, 64):
        check_case(lib, rng, dtype, M, H, 4 * H, 1, 1)
        check_case(lib, rng, dtype, M, 4 * H, H, 0, 1)
        check_case(lib, rng, dtype, M, 4 * H, H, 0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k_zero(lib, dtype):
    """An empty sum: C = 0 without accumulate, C unchanged with it."""
    packed = np.zeros(1, dtype=dtype)
    A = np.zeros((3, 1), dtype=dtype)
    for accumulate in (0, 1):
        C = np.full((3, 5), 2.0, dtype=dtype)
        packed_gemm(lib, A, packed, C, 0, 4, accumulate)
        np.testing.assert_array_equal(C[:, :4], 2.0 if accumulate else 0.0)
        np.testing.assert_array_equal(C[:, 4], 2.0)


def test_threads_share_packed(lib):
    """Several threads at once, one packed matrix, each on its own rows (the OpenMP use):
    ctypes drops the GIL during the call, so the calls do overlap."""
    rng = np.random.default_rng(6)
    K, N, M, threads = 256, 300, 8, 8
    P = rng.standard_normal((K, N)).astype(np.float32)
    packed = pack(lib, P, np.float32, 0)
    A = rng.standard_normal((threads * M, K)).astype(np.float32)
    C = np.zeros((threads * M, N), dtype=np.float32)

    def work(t):
        rows = slice(t * M, (t + 1) * M)
        for _ in range(200):
            packed_gemm(lib, A[rows], packed, C[rows], K, N, 0)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    expected = A.astype(np.float64) @ P.astype(np.float64)
    np.testing.assert_allclose(C, expected, rtol=1e-4, atol=1e-3)


def test_auto_selects_best(lib):
    """Automatic choice is the most capable kernel the CPU runs."""
    assert lib.clstm_packed_gemm_select(-1) == lib.clstm_packed_gemm_isa()
    best = lib.clstm_packed_gemm_isa()
    for name, code in ISAS.items():
        if code > best:
            assert lib.clstm_packed_gemm_select(code) == -1, name
    lib.clstm_packed_gemm_select(-1)
    assert lib.clstm_packed_gemm_isa_name().decode() in ISAS


# K blocks of the Aᵀ kernel: 256 floats / 128 doubles (PG_AT_KC_BYTES = 1024), cut into
# near-equal blocks; row blocks of 16 slabs of 8 (AVX-512) or 6 (AVX2) rows.
AT_KC = {np.float32: 256, np.float64: 128}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_small_edges(lib, isa, dtype):
    """Aᵀ: every M across slab and row-block edges, N across panel edges, tiny K."""
    rng = np.random.default_rng(7)
    nr = NR[dtype]
    for M in list(range(1, 18)) + [47, 48, 49, 95, 96, 97, 127, 128, 129, 193]:
        for N in (1, nr // 2 - 1, nr // 2 + 1, nr - 1, nr, nr + 1, 2 * nr + 3):
            for K in (1, 2, 5):
                check_case_at(lib, rng, dtype, M, K, N, (M + K) % 2,
                              pad_a=(M + N) % 4, pad_c=N % 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_k_blocks(lib, isa, dtype):
    """Aᵀ: K just below, at and above multiples of the k block."""
    rng = np.random.default_rng(8)
    kc = AT_KC[dtype]
    for j, K in enumerate((kc - 1, kc, kc + 1, 2 * kc - 1, 2 * kc, 2 * kc + 1, 3 * kc + 7,
                           7 * kc - 1, 7 * kc + 1)):
        M = (5, 129, 40, 97, 130, 8, 200, 33, 64)[j]
        N = (33, 7, 64, 100, 17, 96, 65, 1, 40)[j]
        check_case_at(lib, rng, dtype, M, K, N, j % 2, pad_a=j % 3, pad_c=(j + 1) % 3,
                      pad_src=j % 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_random_shapes(lib, isa, dtype):
    """Aᵀ: random M 1..300, K 1..4000, N 1..600, accumulate on and off, padded lda/ldc."""
    rng = np.random.default_rng(9 if dtype is np.float32 else 10)
    for case in range(16):
        M = int(rng.integers(1, 301))
        K = int(rng.integers(1, 4001)) if case % 3 else int(rng.integers(1, 60))
        N = int(rng.integers(1, 601)) if case % 4 else int(rng.integers(1, 40))
        check_case_at(lib, rng, dtype, M, K, N, int(rng.integers(2)),
                      pad_a=int(rng.integers(0, 9)), pad_c=int(rng.integers(0, 9)),
                      pad_src=int(rng.integers(0, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_k_zero(lib, dtype):
    """Aᵀ with K = 0: C = 0 without accumulate, C unchanged with it."""
    packed = np.zeros(1, dtype=dtype)
    A = np.zeros((1, 3), dtype=dtype)
    for accumulate in (0, 1):
        C = np.full((3, 5), 2.0, dtype=dtype)
        getattr(lib, f"clstm_packed_gemm_at_{SUFFIX[dtype]}")(
            3, 0, 4, A.ctypes.data, 3, packed.ctypes.data, C.ctypes.data, 5, accumulate)
        np.testing.assert_array_equal(C[:, :4], 2.0 if accumulate else 0.0)
        np.testing.assert_array_equal(C[:, 4], 2.0)


def test_at_threads(lib):
    """Aᵀ from several threads at once (each on its own C, one packed P)."""
    rng = np.random.default_rng(11)
    K, M, N, threads = 700, 150, 70, 4
    P = rng.standard_normal((K, N)).astype(np.float32)
    packed = pack(lib, P, np.float32, 0)
    A = rng.standard_normal((threads, K, M)).astype(np.float32)
    C = np.zeros((threads, M, N), dtype=np.float32)

    def work(t):
        for _ in range(20):
            lib.clstm_packed_gemm_at_f32(M, K, N, A[t].ctypes.data, M, packed.ctypes.data,
                                         C[t].ctypes.data, N, 0)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    for t in range(threads):
        expected = A[t].T.astype(np.float64) @ P.astype(np.float64)
        np.testing.assert_allclose(C[t], expected, rtol=1e-4, atol=1e-3)


# ---- two matrices into one C: clstm_pack_cat_* and clstm_packed_gemm2_* ----

def check_case2(lib, rng, dtype, M, K1, K2, N, src_is_nk, accumulate, with_a2=True,
                pad_a=0, pad_c=0):
    """C (+)= [A1, A2] · [P1; P2] (A2 absent: A1 · P1) from one concatenated pack, against
    NumPy; A1, A2 padded with NaN past their K columns, C with a sentinel past N."""
    suf = SUFFIX[dtype]
    P1 = rng.standard_normal((K1, N)).astype(dtype)
    P2 = rng.standard_normal((K2, N)).astype(dtype)
    src1 = np.ascontiguousarray(P1.T if src_is_nk else P1)
    src2 = np.ascontiguousarray(P2.T if src_is_nk else P2)
    size = getattr(lib, f"clstm_packed_size_{suf}")(K1 + K2, N)
    packed = np.full(max(size, 1), np.nan, dtype=dtype)
    getattr(lib, f"clstm_pack_cat_{suf}")(K1, K2, N, src1.ctypes.data, max(src1.shape[1], 1),
                                          src2.ctypes.data, max(src2.shape[1], 1),
                                          int(src_is_nk), packed.ctypes.data)
    assert not np.isnan(packed[:size]).any(), "a packed slot left unwritten"
    A1 = np.full((M, K1 + pad_a), np.nan, dtype=dtype)
    A1[:, :K1] = rng.standard_normal((M, K1))
    A2 = np.full((M, K2 + pad_a + 1), np.nan, dtype=dtype)
    A2[:, :K2] = rng.standard_normal((M, K2))
    C = np.full((M, N + pad_c), 7.0, dtype=dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    C[:, :N] = C0
    getattr(lib, f"clstm_packed_gemm2_{suf}")(
        M, K1, K2, N, A1.ctypes.data, A1.shape[1], A2.ctypes.data if with_a2 else None,
        A2.shape[1], packed.ctypes.data, C.ctypes.data, C.shape[1], int(accumulate))

    A = np.hstack([A1[:, :K1], A2[:, :K2] if with_a2 else np.zeros((M, K2))]).astype(np.float64)
    P = np.vstack([P1, P2]).astype(np.float64)
    expected = A @ P + (C0 if accumulate else 0)
    magnitude = np.abs(A) @ np.abs(P) + (np.abs(C0) if accumulate else 0)
    bound = 2 * np.finfo(dtype).eps * (K1 + K2 + 2) * magnitude + np.finfo(dtype).tiny
    err = np.abs(C[:, :N] - expected)
    where = f"gemm2 {dtype.__name__} M={M} K1={K1} K2={K2} N={N} a2={with_a2} acc={accumulate}"
    assert np.all(err <= bound), f"{where}: max excess {np.max(err - bound)}"
    assert np.all(C[:, N:] == 7.0), f"{where}: wrote past column N"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_cat_is_pack_of_stacked(lib, dtype):
    """The concatenated pack is exactly the pack of the stacked matrix, both layouts."""
    rng = np.random.default_rng(21)
    suf = SUFFIX[dtype]
    for K1, K2, N in ((3, 5, 7), (64, 64, 256), (1, 130, NR[dtype] + 1), (17, 0, 40), (0, 9, 3)):
        P1 = rng.standard_normal((K1, N)).astype(dtype)
        P2 = rng.standard_normal((K2, N)).astype(dtype)
        for src_is_nk in (0, 1):
            s1 = np.ascontiguousarray(P1.T if src_is_nk else P1)
            s2 = np.ascontiguousarray(P2.T if src_is_nk else P2)
            size = getattr(lib, f"clstm_packed_size_{suf}")(K1 + K2, N)
            got = np.full(size, np.nan, dtype=dtype)
            getattr(lib, f"clstm_pack_cat_{suf}")(
                K1, K2, N, s1.ctypes.data, max(s1.shape[1], 1), s2.ctypes.data,
                max(s2.shape[1], 1), src_is_nk, got.ctypes.data)
            want = pack(lib, np.vstack([P1, P2]), dtype, src_is_nk)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm2_small_edges(lib, isa, dtype):
    """Every M up to two row blocks, N across panel edges, tiny K1 and K2, with and
    without A2."""
    rng = np.random.default_rng(22)
    nr = NR[dtype]
    for M in range(1, 18):
        for N in (1, nr // 2 + 1, nr, nr + 1, 2 * nr + 3):
            for K1, K2 in ((1, 1), (2, 3), (5, 1), (1, 6)):
                check_case2(lib, rng, dtype, M, K1, K2, N, (M + N) % 2, (M + K1) % 2,
                            with_a2=bool((M + K2 + N) % 3), pad_a=M % 3, pad_c=N % 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm2_random_shapes(lib, isa, dtype):
    """Random sizes, k blocks that straddle the A1/A2 boundary (K1 + K2 past the k-block
    size of 512), the LSTM's shapes (K1 = I, K2 = H, N = 4H)."""
    rng = np.random.default_rng(23 if dtype is np.float32 else 24)
    cases = [(32, 256, 256, 1024), (16, 128, 128, 512), (8, 40, 96, 384), (64, 512, 512, 2048),
             (5, 300, 400, 96), (40, 700, 300, 64)]
    for _ in range(24):
        cases.append((int(rng.integers(1, 71)), int(rng.integers(1, 700)),
                      int(rng.integers(1, 700)), int(rng.integers(1, 500))))
    for n, (M, K1, K2, N) in enumerate(cases):
        check_case2(lib, rng, dtype, M, K1, K2, N, n % 2, (n // 2) % 2, with_a2=n % 5 != 4,
                    pad_a=int(rng.integers(0, 5)), pad_c=int(rng.integers(0, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm2_equals_two_products(lib, isa, dtype):
    """[A1, A2]·[P1; P2] equals A1·P1 then += A2·P2 to rounding, and with A2 absent equals
    A1·P1 through the plain call bit for bit when K2 = 0 (the same kernel and order)."""
    rng = np.random.default_rng(25)
    suf = SUFFIX[dtype]
    M, K1, N = 20, 70, 150
    P1 = rng.standard_normal((K1, N)).astype(dtype)
    A1 = rng.standard_normal((M, K1)).astype(dtype)
    packed = pack(lib, P1, dtype, 0)
    C_one = np.zeros((M, N), dtype=dtype)
    packed_gemm(lib, A1, packed, C_one, K1, N, 0)
    C_two = np.zeros((M, N), dtype=dtype)
    getattr(lib, f"clstm_packed_gemm2_{suf}")(M, K1, 0, N, A1.ctypes.data, K1, None, 1,
                                              packed.ctypes.data, C_two.ctypes.data, N, 0)
    np.testing.assert_array_equal(C_one, C_two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm2_k_zero(lib, dtype):
    """No A1 columns and no A2: an empty sum (C = 0, or unchanged when accumulating)."""
    suf = SUFFIX[dtype]
    packed = np.zeros(64, dtype=dtype)
    A = np.zeros((3, 4), dtype=dtype)
    for accumulate in (0, 1):
        C = np.full((3, 5), 2.0, dtype=dtype)
        getattr(lib, f"clstm_packed_gemm2_{suf}")(3, 0, 2, 4, A.ctypes.data, 4, None, 4,
                                                  packed.ctypes.data, C.ctypes.data, 5,
                                                  accumulate)
        np.testing.assert_array_equal(C[:, :4], 2.0 if accumulate else 0.0)
        np.testing.assert_array_equal(C[:, 4], 2.0)
