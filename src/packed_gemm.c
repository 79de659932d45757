/* Packed small-M GEMM: C (M × N) (+)= A (M × K) · P, with P packed once (layout and
 * contract in packed_gemm.h).
 *
 * Why: the LSTM's recurrent GEMM runs T times per sequence with the same W_hh and only
 * M = 1..64 rows per thread. OpenBLAS re-packs W_hh on every call (~15% of the time)
 * and is tuned for large M. Here W_hh is packed once and each step is a register-blocked
 * micro-kernel: MR rows × 2 vectors of accumulators, one broadcast of A[r, k] and two
 * FMAs per row and k, A read in place (row-major, no packing).
 *
 * Run-time dispatch: the package is built with -O3 only (a wheel must run on any
 * x86-64), so the kernels carry target("avx512f") / target("avx2,fma") attributes and
 * one is chosen from __builtin_cpu_supports on first use. A plain-C kernel serves every
 * other CPU and compiler. All kernels read the same packed layout.
 *
 * How the code is laid out: this file includes itself, so that each kernel is written
 * once and compiled for each type and instruction set.
 *   pass 1 (nothing defined): common code, then the type pass for float and for double,
 *          then dispatch and the public functions;
 *   pass 2 (PG_TYPE_PASS):    packing and the plain-C kernel for one type, then the
 *                             kernel pass for AVX-512 and for AVX2 (x86 + GCC/Clang);
 *   pass 3 (PG_KERNEL_PASS):  the micro-kernel and its blocking loops for one type and
 *                             one instruction set, written over vector macros V*.
 */

/* ===================================================================================== */
#if !defined(PG_TYPE_PASS)
/* ===================================================================================== */

#include <stddef.h>
#include <string.h>
#include "packed_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define PG_X86 1
#include <immintrin.h>
#else
#define PG_X86 0
#endif

#if defined(__GNUC__)
#define PG_INLINE static inline __attribute__((always_inline))
#else
#define PG_INLINE static inline
#endif

/* Loads a panel vector into a register once per k: without this, GCC folds the load
 * into every row's FMA as a memory operand, which for 2-3 rows doubles or triples the
 * wide loads per k and makes the kernel load-bound (measured: 2 rows ran at 70% of
 * peak). The empty asm makes the value opaque, so it must sit in a register. */
#if defined(__GNUC__)
#define PG_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define PG_IN_REGISTER(v) ((void)0)
#endif

#define PG_CAT_(a, b) a##_##b
#define PG_CAT(a, b) PG_CAT_(a, b)

/* K is cut into blocks so that one panel's block (kc × NR values, reused by every MR-row
 * block of A) stays in L1 next to the A rows: 128 × 128 bytes = 16 KiB of a 32-48 KiB
 * L1 (NR·sizeof is 128 bytes for both types). */
#define PG_KC_MAX 128

static int pg_min(int a, int b) { return a < b ? a : b; }

/* Row blocks of at most `kc_max` k each, of near-equal size (K = 130 gives 65 + 65, not
 * 128 + 2). No blocking when there is a single row block: then each panel value is used
 * once anyway, and splitting K would only add C round trips. */
static int pg_k_step(int M, int K, int mr_max)
{
    if (M <= mr_max || K <= PG_KC_MAX)
        return K;
    int nblocks = (K + PG_KC_MAX - 1) / PG_KC_MAX;
    return (K + nblocks - 1) / nblocks;
}

typedef void (*pg_gemm_f32_fn)(int, int, int, const float *, ptrdiff_t, const float *,
                               float *, ptrdiff_t, int);
typedef void (*pg_gemm_f64_fn)(int, int, int, const double *, ptrdiff_t, const double *,
                               double *, ptrdiff_t, int);

/* ---- float ---- */
#define PG_TYPE_PASS 1
#define T float
#define PG_SUF f32
#define PG_F64 0
#define NR CLSTM_PACKED_NR_F32
#include "packed_gemm.c"
#undef T
#undef PG_SUF
#undef PG_F64
#undef NR

/* ---- double ---- */
#define T double
#define PG_SUF f64
#define PG_F64 1
#define NR CLSTM_PACKED_NR_F64
#include "packed_gemm.c"
#undef T
#undef PG_SUF
#undef PG_F64
#undef NR
#undef PG_TYPE_PASS

/* ---- dispatch ---- */

typedef struct {
    int isa;
    const char *name;
    pg_gemm_f32_fn f32;
    pg_gemm_f64_fn f64;
} pg_impl;

static const pg_impl pg_impls[] = {
    {CLSTM_PG_GENERIC, "generic", gemm_generic_f32, gemm_generic_f64},
#if PG_X86
    {CLSTM_PG_AVX2, "avx2", gemm_avx2_f32, gemm_avx2_f64},
    {CLSTM_PG_AVX512, "avx512", gemm_avx512_f32, gemm_avx512_f64},
#endif
};
#define PG_N_IMPLS ((int)(sizeof(pg_impls) / sizeof(pg_impls[0])))

static int pg_cpu_has(int isa)
{
#if PG_X86
    /* __builtin_cpu_supports also checks that the OS saves the wider registers. */
    __builtin_cpu_init();
    if (isa == CLSTM_PG_AVX512)
        return __builtin_cpu_supports("avx512f");
    if (isa == CLSTM_PG_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == CLSTM_PG_GENERIC;
}

static int pg_best_isa(void)
{
    for (int i = PG_N_IMPLS - 1; i > 0; i--)
        if (pg_cpu_has(pg_impls[i].isa))
            return pg_impls[i].isa;
    return CLSTM_PG_GENERIC;
}

/* The kernel in use; NULL until first chosen. Several OpenMP threads may race to choose
 * it: they all compute and store the same pointer, and the atomics make that race
 * well-defined. */
static const pg_impl *pg_active;

#if defined(__GNUC__)
#define PG_LOAD(p) __atomic_load_n(&(p), __ATOMIC_ACQUIRE)
#define PG_STORE(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELEASE)
/* Choose at load time, so the hot path never even sees NULL in practice. */
__attribute__((constructor)) static void pg_init(void) { clstm_packed_gemm_select(CLSTM_PG_AUTO); }
#else
/* Without GNU C there is only the generic kernel: every racing writer stores the same
 * pointer. */
#define PG_LOAD(p) (p)
#define PG_STORE(p, v) ((p) = (v))
#endif

int clstm_packed_gemm_select(int isa)
{
    if (isa == CLSTM_PG_AUTO)
        isa = pg_best_isa();
    for (int i = 0; i < PG_N_IMPLS; i++)
        if (pg_impls[i].isa == isa && pg_cpu_has(isa)) {
            PG_STORE(pg_active, &pg_impls[i]);
            return isa;
        }
    return -1;
}

static const pg_impl *pg_current(void)
{
    const pg_impl *impl = PG_LOAD(pg_active);
    if (impl == NULL) {
        clstm_packed_gemm_select(CLSTM_PG_AUTO);
        impl = PG_LOAD(pg_active);
    }
    return impl;
}

int clstm_packed_gemm_isa(void) { return pg_current()->isa; }
const char *clstm_packed_gemm_isa_name(void) { return pg_current()->name; }

/* ---- public entry points ---- */

#define PG_PUBLIC(T, SUF, NRV)                                                                \
    size_t clstm_packed_size_##SUF(int K, int N)                                              \
    {                                                                                         \
        if (K <= 0 || N <= 0)                                                                 \
            return 0;                                                                         \
        return (size_t)K * (size_t)((N + NRV - 1) / NRV) * NRV;                               \
    }                                                                                         \
    void clstm_pack_##SUF(int K, int N, const T *src, int ld, int src_is_nk, T *packed)       \
    {                                                                                         \
        if (K <= 0 || N <= 0)                                                                 \
            return;                                                                           \
        pack_##SUF(K, N, src, ld, src_is_nk, packed);                                         \
    }                                                                                         \
    void clstm_packed_gemm_##SUF(int M, int K, int N, const T *A, int lda, const T *packed,   \
                                 T *C, int ldc, int accumulate)                               \
    {                                                                                         \
        if (M <= 0 || N <= 0)                                                                 \
            return;                                                                           \
        if (K <= 0) { /* an empty sum: C = 0, or C unchanged */                               \
            if (!accumulate)                                                                  \
                for (int i = 0; i < M; i++)                                                   \
                    memset(C + (ptrdiff_t)i * ldc, 0, (size_t)N * sizeof(T));                 \
            return;                                                                           \
        }                                                                                     \
        pg_current()->SUF(M, K, N, A, lda, packed, C, ldc, accumulate);                       \
    }

PG_PUBLIC(float, f32, CLSTM_PACKED_NR_F32)
PG_PUBLIC(double, f64, CLSTM_PACKED_NR_F64)

/* ===================================================================================== */
#elif !defined(PG_KERNEL_PASS)
/* ===================================================================================== */
/* Type pass: T, PG_SUF, PG_F64 and NR are defined. */

#define PG_FN(name) PG_CAT(name, PG_SUF)

/* Panel by panel, k by k: each packed row of NR values is written once, contiguously.
 * From Pᵀ (src_is_nk) the reads walk NR source rows side by side, which the caches
 * absorb (NR lines live at once); packing runs once per sequence, not per step. */
static void PG_FN(pack)(int K, int N, const T *src, int ld, int src_is_nk, T *packed)
{
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nc = pg_min(NR, N - n0);
        T *panel = packed + (ptrdiff_t)(n0 / NR) * K * NR;
        for (int k = 0; k < K; k++) {
            T *dst = panel + (ptrdiff_t)k * NR;
            if (src_is_nk)
                for (int j = 0; j < nc; j++)
                    dst[j] = src[(ptrdiff_t)(n0 + j) * ld + k];
            else
                for (int j = 0; j < nc; j++)
                    dst[j] = src[(ptrdiff_t)k * ld + n0 + j];
            for (int j = nc; j < NR; j++)
                dst[j] = 0;
        }
    }
}

/* Plain C, correct anywhere; one row at a time with NR accumulators, which compilers
 * vectorise for the baseline instruction set. */
static void PG_FN(gemm_generic)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nc = pg_min(NR, N - n0);
        const T *panel = P + (ptrdiff_t)(n0 / NR) * K * NR;
        for (int i = 0; i < M; i++) {
            const T *a = A + (ptrdiff_t)i * lda;
            T acc[NR];
            for (int j = 0; j < NR; j++)
                acc[j] = 0;
            for (int k = 0; k < K; k++) {
                const T ak = a[k];
                const T *b = panel + (ptrdiff_t)k * NR;
                for (int j = 0; j < NR; j++)
                    acc[j] += ak * b[j];
            }
            T *c = C + (ptrdiff_t)i * ldc + n0;
            for (int j = 0; j < nc; j++)
                c[j] = accumulate ? c[j] + acc[j] : acc[j];
        }
    }
}

#if PG_X86
#define PG_KERNEL_PASS 1

/* ---- AVX-512F: a micro-kernel covers a whole panel (2 zmm = NR), 8 rows: 16
 * accumulators + 2 panel vectors + 1 broadcast of the 32 zmm registers. ---- */
#define PG_ISA avx512
#define PG_TARGET __attribute__((target("avx512f")))
#define MR 8
#if PG_F64
#define V __m512d
#define LANES 8
#define VOP(op) _mm512_##op##_pd
#else
#define V __m512
#define LANES 16
#define VOP(op) _mm512_##op##_ps
#endif
#define VMASK_T unsigned
#define VMASK(n) ((1u << (n)) - 1u)            /* first n lanes, n = 0..LANES */
#define VLOAD_MASK(p, m) VOP(maskz_loadu)((m), (p))
#define VSTORE_MASK(p, m, v) VOP(mask_storeu)((p), (m), (v))
#include "packed_gemm.c"
#undef PG_ISA
#undef PG_TARGET
#undef MR
#undef V
#undef LANES
#undef VOP
#undef VMASK_T
#undef VMASK
#undef VLOAD_MASK
#undef VSTORE_MASK

/* ---- AVX2+FMA: 16 ymm registers only, so a micro-kernel covers half a panel (2 ymm,
 * 64 bytes: one cache line per k) and 6 rows: 12 accumulators + 2 + 1. ---- */
#define PG_ISA avx2
#define PG_TARGET __attribute__((target("avx2,fma")))
#define MR 6
#define VMASK_T __m256i
#if PG_F64
#define V __m256d
#define LANES 4
#define VOP(op) _mm256_##op##_pd
#define VMASK(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))
#else
#define V __m256
#define LANES 8
#define VOP(op) _mm256_##op##_ps
#define VMASK(n) _mm256_cmpgt_epi32(_mm256_set1_epi32(n), \
                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#endif
#define VLOAD_MASK(p, m) VOP(maskload)((p), (m))
#define VSTORE_MASK(p, m, v) VOP(maskstore)((p), (m), (v))
#include "packed_gemm.c"
#undef PG_ISA
#undef PG_TARGET
#undef MR
#undef V
#undef LANES
#undef VOP
#undef VMASK_T
#undef VMASK
#undef VLOAD_MASK
#undef VSTORE_MASK

#undef PG_KERNEL_PASS
#endif /* PG_X86 */

#undef PG_FN

/* ===================================================================================== */
#else
/* ===================================================================================== */
/* Kernel pass: T, NR, PG_SUF plus the ISA's PG_ISA, PG_TARGET, MR, V, LANES, VOP, VMASK*
 * are defined. A micro-kernel covers CW = 2·LANES columns of a panel. */

#define PG_KN(name) PG_CAT(PG_CAT(name, PG_ISA), PG_SUF)
#define CW (2 * LANES)

/* C[0:mr, 0:ncols] (+)= A[0:mr, 0:kc] · B[0:kc, 0:CW], B with row stride NR (a panel
 * slice), mr a compile-time constant after inlining (the switch below), so the
 * accumulators live in registers. ncols < CW only in the last panel: masked C access,
 * never touching memory past column N. */
PG_INLINE PG_TARGET void PG_KN(tile)(const int mr, const int kc, const T *restrict a,
                                     const ptrdiff_t lda, const T *restrict b,
                                     T *restrict c, const ptrdiff_t ldc, const int ncols,
                                     const int load_c)
{
    /* An FMA has a latency of ~4 cycles and 1-2 issue per cycle, so ~8 independent
     * accumulator chains keep the FMA units busy. With 1-3 rows there are only 2-6, so
     * the k loop is split over S interleaved accumulator sets, summed at the end. */
    enum { SMAX = 4 };
    const int S = mr == 1 ? 4 : mr <= 3 ? 2 : 1;
    V acc[SMAX][MR][2];
#pragma GCC unroll 4
    for (int s = 0; s < S; s++)
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
            acc[s][r][0] = acc[s][r][1] = VOP(setzero)();

    int k = 0;
    for (; k + S <= kc; k += S) {
#pragma GCC unroll 4
        for (int s = 0; s < S; s++) {
            const T *bk = b + (ptrdiff_t)(k + s) * NR;
#ifdef PG_PF
            if (mr <= PG_PF_MR) { _mm_prefetch((const char *)(bk + PG_PF), PG_PF_HINT);
              _mm_prefetch((const char *)(bk + PG_PF + 64 / sizeof(T)), PG_PF_HINT); }
#endif
            V b0 = VOP(loadu)(bk), b1 = VOP(loadu)(bk + LANES);
            PG_IN_REGISTER(b0);
            PG_IN_REGISTER(b1);
#pragma GCC unroll 8
            for (int r = 0; r < mr; r++) {
                const V ar = VOP(set1)(a[r * lda + k + s]);
                acc[s][r][0] = VOP(fmadd)(ar, b0, acc[s][r][0]);
                acc[s][r][1] = VOP(fmadd)(ar, b1, acc[s][r][1]);
            }
        }
    }
    for (; k < kc; k++) {
        const T *bk = b + (ptrdiff_t)k * NR;
        V b0 = VOP(loadu)(bk), b1 = VOP(loadu)(bk + LANES);
        PG_IN_REGISTER(b0);
        PG_IN_REGISTER(b1);
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            const V ar = VOP(set1)(a[r * lda + k]);
            acc[0][r][0] = VOP(fmadd)(ar, b0, acc[0][r][0]);
            acc[0][r][1] = VOP(fmadd)(ar, b1, acc[0][r][1]);
        }
    }
#pragma GCC unroll 4
    for (int s = 1; s < S; s++)
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            acc[0][r][0] = VOP(add)(acc[0][r][0], acc[s][r][0]);
            acc[0][r][1] = VOP(add)(acc[0][r][1], acc[s][r][1]);
        }

    if (ncols == CW) {
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            T *cr = c + r * ldc;
            if (load_c) {
                acc[0][r][0] = VOP(add)(acc[0][r][0], VOP(loadu)(cr));
                acc[0][r][1] = VOP(add)(acc[0][r][1], VOP(loadu)(cr + LANES));
            }
            VOP(storeu)(cr, acc[0][r][0]);
            VOP(storeu)(cr + LANES, acc[0][r][1]);
        }
    } else {
        const VMASK_T m0 = VMASK(ncols < LANES ? ncols : LANES);
        const VMASK_T m1 = VMASK(ncols > LANES ? ncols - LANES : 0);
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            T *cr = c + r * ldc;
            if (load_c) {
                acc[0][r][0] = VOP(add)(acc[0][r][0], VLOAD_MASK(cr, m0));
                acc[0][r][1] = VOP(add)(acc[0][r][1], VLOAD_MASK(cr + LANES, m1));
            }
            VSTORE_MASK(cr, m0, acc[0][r][0]);
            VSTORE_MASK(cr + LANES, m1, acc[0][r][1]);
        }
    }
}

/* Loop order: panel (NR columns) → k block → column half (AVX2) → MR-row block. The
 * panel's k block (16 KiB) stays in L1 while every row block of A streams past it from
 * L2; the packed buffer itself is read once, front to back, which the hardware
 * prefetcher follows. */
static PG_TARGET void PG_KN(gemm)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                  const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    const int kstep = pg_k_step(M, K, MR);
    for (int n0 = 0; n0 < N; n0 += NR) {
        const T *panel = P + (ptrdiff_t)(n0 / NR) * K * NR;
        for (int k0 = 0; k0 < K; k0 += kstep) {
            const int kc = pg_min(kstep, K - k0);
            const int load_c = accumulate || k0 > 0;
            for (int j0 = 0; j0 < NR && n0 + j0 < N; j0 += CW) {
                const int ncols = pg_min(CW, N - n0 - j0);
                const T *b = panel + (ptrdiff_t)k0 * NR + j0;
                for (int i0 = 0; i0 < M; i0 += MR) {
                    const T *a = A + (ptrdiff_t)i0 * lda + k0;
                    T *c = C + (ptrdiff_t)i0 * ldc + n0 + j0;
                    switch (pg_min(MR, M - i0)) {
#if MR >= 8
                    case 8: PG_KN(tile)(8, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    case 7: PG_KN(tile)(7, kc, a, lda, b, c, ldc, ncols, load_c); break;
#endif
                    case 6: PG_KN(tile)(6, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    case 5: PG_KN(tile)(5, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    case 4: PG_KN(tile)(4, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    case 3: PG_KN(tile)(3, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    case 2: PG_KN(tile)(2, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    default: PG_KN(tile)(1, kc, a, lda, b, c, ldc, ncols, load_c); break;
                    }
                }
            }
        }
    }
}

#undef PG_KN
#undef CW

#endif /* passes */
