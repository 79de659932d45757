/* Packed small-M GEMM: C (M × N) (+)= A (M × K) · P, with P packed once (layout and
 * contract in packed_gemm.h).
 *
 * Why: the LSTM's recurrent GEMM runs T times per sequence with the same W_hh and only
 * M = 1..64 rows per thread. OpenBLAS re-packs W_hh on every call (~15% of the time)
 * and is tuned for large M. Here W_hh is packed once and each step is a register-blocked
 * micro-kernel: up to MR rows × 2 vectors (4 when M is tiny) of accumulators, per row
 * and k one broadcast of A[r, k] and an FMA per vector; A is read in place (row-major,
 * no packing: each A value feeds 2-4 vectors of FMAs, so copying it would not pay).
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

/* CLSTM_NO_CLONES (as in gates.c) builds the plain-C kernel only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(CLSTM_NO_CLONES)
#define PG_X86 1
#include <immintrin.h>
#else
#define PG_X86 0
#endif

/* SSE2 (the x86-64 baseline) for the transposing pack. */
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(CLSTM_NO_CLONES)
#define PG_SSE2 1
#include <emmintrin.h>
#else
#define PG_SSE2 0
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

/* Cache blocking. A micro-kernel tile (8 rows × one panel) needs 128 bytes of panel per
 * 16 FMAs (~8 bytes per cycle), which L2 delivers easily, so each tile streams its panel
 * from L2 rather than holding a k block of it in L1: measured on Zen 4, k blocks of 128
 * (16 KiB, L1-sized) were 3-13% slower than none at K = 256..2048 (every block is one
 * more load and store of the C tile, and with power-of-two ldc the C rows collide in
 * one L1 set). What must not happen is a panel falling out of L2 between the row blocks
 * that reuse it, so K is cut into blocks of at most 512 (a 64 KiB panel slice). */
#ifndef PG_KC_MAX
#define PG_KC_MAX 512
#endif

static inline int pg_min(int a, int b) { return a < b ? a : b; }

/* Fetch each panel's C block into L2 one panel ahead (gemm_rows): the LSTM's per-step
 * C is the step's rows of the gate buffer, written by the upfront input projection long
 * before (from memory) or never yet touched; the per-tile prefetch of the C tile alone
 * came too late for K = 128-256. Measured on Zen 4, 1 thread, f32, C cycling over T
 * steps: AVX2 +4-10% (M = 32, K = 256, N = 1024: 96-98 -> 104-106 GFLOP/s; M = 64,
 * K = 128, N = 2048: 93-94 -> 101-102), AVX-512 +2-6%. A knob for A/B measurements:
 * clstm_packed_gemm_set_prefetch_c. */
static int pg_prefetch_panels = 1;

int clstm_packed_gemm_set_prefetch_c(int enabled)
{
    const int old = pg_prefetch_panels;
    pg_prefetch_panels = enabled != 0;
    return old;
}

/* k blocks of at most PG_KC_MAX, of near-equal size (K = 520 gives 260 + 260, not
 * 512 + 8). None with a single row block: then each panel value is used once anyway. */
static inline int pg_k_step(int M, int K, int mr_max)
{
    if (M <= mr_max || K <= PG_KC_MAX)
        return K;
    int nblocks = (K + PG_KC_MAX - 1) / PG_KC_MAX;
    return (K + nblocks - 1) / nblocks;
}

/* Aᵀ kernel (clstm_packed_gemm_at_*, the weight gradients: K = T·B is long, A = da has
 * a power-of-two row stride). M is cut into row blocks of PG_AT_MC_SLABS slabs of MR_AT
 * rows and K into blocks of at most PG_AT_KC_BYTES / sizeof(T) values (near-equal);
 * each (row block, k block) of A is packed once into a stack buffer (slab after slab,
 * k-major: the MR_AT values of one k adjacent, so broadcasts read contiguous memory and
 * the strided rows of A are read once) and reused by every column block. Reading A in
 * place instead walks kc rows of stride lda per tile, which for lda = 4H a power of two
 * all fall in a few cache sets. Row blocks outermost: their C rows (MC × N) stay in L2
 * over the k blocks; the packed P k slice of a column block (kc·NR values) is reused by
 * the block's MC / MR_AT slabs from L1/L2. Measured on Zen 4 (f32, 1 thread, T·B =
 * 3200-4096, 4H = 512-2048, N = 128-512): 256 × 128 blocks (128 KiB of stack) 2-6%
 * faster than 256 × 64 or 128 × 128; k outermost (C re-read per k block) 0-8% slower. */
#ifndef PG_AT_KC_BYTES
#define PG_AT_KC_BYTES 1024
#endif
#ifndef PG_AT_MC_SLABS
#define PG_AT_MC_SLABS 16
#endif

static inline int pg_at_k_step(int K, int kc_max)
{
    if (K <= kc_max)
        return K;
    int nblocks = (K + kc_max - 1) / kc_max;
    return (K + nblocks - 1) / nblocks;
}

typedef void (*pg_gemm_f32_fn)(int, int, int, const float *, ptrdiff_t, const float *,
                               float *, ptrdiff_t, int);
typedef void (*pg_gemm_f64_fn)(int, int, int, const double *, ptrdiff_t, const double *,
                               double *, ptrdiff_t, int);
typedef void (*pg_gemm2_f32_fn)(int, int, int, int, const float *, ptrdiff_t, const float *,
                                ptrdiff_t, const float *, float *, ptrdiff_t, int);
typedef void (*pg_gemm2_f64_fn)(int, int, int, int, const double *, ptrdiff_t,
                                const double *, ptrdiff_t, const double *, double *,
                                ptrdiff_t, int);

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
    pg_gemm_f32_fn at_f32;
    pg_gemm_f64_fn at_f64;
    pg_gemm2_f32_fn f32_2;
    pg_gemm2_f64_fn f64_2;
} pg_impl;

static const pg_impl pg_impls[] = {
    {CLSTM_PG_GENERIC, "generic", gemm_generic_f32, gemm_generic_f64, gemm_at_generic_f32,
     gemm_at_generic_f64, gemm2_generic_f32, gemm2_generic_f64},
#if PG_X86
    {CLSTM_PG_AVX2, "avx2", gemm_avx2_f32, gemm_avx2_f64, gemm_at_avx2_f32, gemm_at_avx2_f64,
     gemm2_avx2_f32, gemm2_avx2_f64},
    {CLSTM_PG_AVX512, "avx512", gemm_avx512_f32, gemm_avx512_f64, gemm_at_avx512_f32,
     gemm_at_avx512_f64, gemm2_avx512_f32, gemm2_avx512_f64},
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
    }                                                                                         \
    void clstm_packed_gemm_at_##SUF(int M, int K, int N, const T *A, int lda,                 \
                                    const T *packed, T *C, int ldc, int accumulate)           \
    {                                                                                         \
        if (M <= 0 || N <= 0)                                                                 \
            return;                                                                           \
        if (K <= 0) {                                                                         \
            if (!accumulate)                                                                  \
                for (int i = 0; i < M; i++)                                                   \
                    memset(C + (ptrdiff_t)i * ldc, 0, (size_t)N * sizeof(T));                 \
            return;                                                                           \
        }                                                                                     \
        pg_current()->at_##SUF(M, K, N, A, lda, packed, C, ldc, accumulate);                  \
    }                                                                                         \
    void clstm_pack_cat_##SUF(int K1, int K2, int N, const T *src1, int ld1, const T *src2,  \
                              int ld2, int src_is_nk, T *packed)                              \
    {                                                                                         \
        if (K1 < 0 || K2 < 0 || K1 + K2 <= 0 || N <= 0)                                     \
            return;                                                                           \
        if (K1 > 0)                                                                           \
            pack_rows_##SUF(K1, N, src1, ld1, src_is_nk, packed, K1 + K2, 0);                \
        if (K2 > 0)                                                                           \
            pack_rows_##SUF(K2, N, src2, ld2, src_is_nk, packed, K1 + K2, K1);               \
    }                                                                                         \
    void clstm_packed_gemm2_##SUF(int M, int K1, int K2, int N, const T *A1, int lda1,        \
                                  const T *A2, int lda2, const T *packed, T *C, int ldc,     \
                                  int accumulate)                                             \
    {                                                                                         \
        if (M <= 0 || N <= 0 || K1 < 0 || K2 < 0)                                            \
            return;                                                                           \
        if (K1 + (A2 != NULL ? K2 : 0) <= 0) {                                                \
            if (!accumulate)                                                                  \
                for (int i = 0; i < M; i++)                                                   \
                    memset(C + (ptrdiff_t)i * ldc, 0, (size_t)N * sizeof(T));                 \
            return;                                                                           \
        }                                                                                     \
        pg_current()->SUF##_2(M, K1, K2, N, A1, lda1, A2, lda2, packed, C, ldc, accumulate);  \
    }

PG_PUBLIC(float, f32, CLSTM_PACKED_NR_F32)
PG_PUBLIC(double, f64, CLSTM_PACKED_NR_F64)

/* ===================================================================================== */
#elif !defined(PG_KERNEL_PASS)
/* ===================================================================================== */
/* Type pass: T, PG_SUF, PG_F64 and NR are defined. */

#define PG_FN(name) PG_CAT(name, PG_SUF)

/* A TB × TB block transposed: d[kk·NR + jj] = s[jj·ld + kk]. SSE2 is part of x86-64
 * itself, so it needs no run-time check: 4×4 floats or 2×2 doubles in registers, 2.5×
 * faster than value by value. */
#if PG_SSE2 && PG_F64
#define PG_TB 2
static inline void PG_FN(transpose_block)(const T *s, ptrdiff_t ld, T *d)
{
    const __m128d r0 = _mm_loadu_pd(s), r1 = _mm_loadu_pd(s + ld);
    _mm_storeu_pd(d, _mm_unpacklo_pd(r0, r1));
    _mm_storeu_pd(d + NR, _mm_unpackhi_pd(r0, r1));
}
#elif PG_SSE2
#define PG_TB 4
static inline void PG_FN(transpose_block)(const T *s, ptrdiff_t ld, T *d)
{
    __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + ld);
    __m128 r2 = _mm_loadu_ps(s + 2 * ld), r3 = _mm_loadu_ps(s + 3 * ld);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(d, r0);
    _mm_storeu_ps(d + NR, r1);
    _mm_storeu_ps(d + 2 * NR, r2);
    _mm_storeu_ps(d + 3 * NR, r3);
}
#else
#define PG_TB 4
static inline void PG_FN(transpose_block)(const T *s, ptrdiff_t ld, T *d)
{
    for (int kk = 0; kk < PG_TB; kk++)
        for (int jj = 0; jj < PG_TB; jj++)
            d[kk * NR + jj] = s[jj * ld + kk];
}
#endif

/* Rows koff .. koff+K-1 of a matrix packed with panels Kp rows long (the concatenated
 * pack of clstm_pack_cat_*; Kp = K, koff = 0 for a matrix alone).
 * Panel by panel: each packed row of NR values is written contiguously. From Pᵀ
 * (src_is_nk, the forward use) this is a transpose, done one cache line of k (KB values)
 * at a time across the panel's NR source rows, so each source line is read once, whole:
 * walking the NR rows one k at a time instead kept NR lines live, which with a
 * power-of-two ld fell into a few L1 sets and thrashed (1 ns per value at H = 512, the
 * cost of ~20 M = 1 steps). Now 0.15-0.4 ns per value. */
static void PG_FN(pack_rows)(int K, int N, const T *src, int ld, int src_is_nk, T *packed,
                              int Kp, int koff)
{
    enum { KB = 64 / sizeof(T) };
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nc = pg_min(NR, N - n0);
        T *panel = packed + (ptrdiff_t)(n0 / NR) * Kp * NR + (ptrdiff_t)koff * NR;
        if (!src_is_nk) {
            for (int k = 0; k < K; k++) {
                T *dst = panel + (ptrdiff_t)k * NR;
                const T *s = src + (ptrdiff_t)k * ld + n0;
                for (int j = 0; j < nc; j++)
                    dst[j] = s[j];
                for (int j = nc; j < NR; j++)
                    dst[j] = 0;
            }
            continue;
        }
        for (int k0 = 0; k0 < K; k0 += KB) {
            const int kb = pg_min(KB, K - k0);
            const int kb_full = kb - kb % PG_TB, nc_full = nc - nc % PG_TB;
            for (int j = 0; j < NR; j += PG_TB) {
                const T *s = src + (ptrdiff_t)(n0 + j) * ld + k0;
                T *d = panel + (ptrdiff_t)k0 * NR + j;
                int kk = 0;
                if (j < nc_full)
                    for (; kk < kb_full; kk += PG_TB)
                        PG_FN(transpose_block)(s + kk, ld, d + (ptrdiff_t)kk * NR);
                for (; kk < kb; kk++)     /* k tail, and the panel's last, partial rows */
                    for (int jj = 0; jj < PG_TB; jj++)
                        d[(ptrdiff_t)kk * NR + jj] = j + jj < nc ? s[(ptrdiff_t)jj * ld + kk] : 0;
            }
        }
    }
}
#undef PG_TB

/* A K × N matrix packed on its own: the panels are K rows long. */
static void PG_FN(pack)(int K, int N, const T *src, int ld, int src_is_nk, T *packed)
{
    PG_FN(pack_rows)(K, N, src, ld, src_is_nk, packed, K, 0);
}

/* Plain C, correct anywhere; one row at a time with NR accumulators, which compilers
 * vectorise for the baseline instruction set. */
static void PG_FN(gemm2_generic)(int M, int K1, int K2, int N, const T *A1, ptrdiff_t lda1,
                                 const T *A2, ptrdiff_t lda2, const T *P, T *C,
                                 ptrdiff_t ldc, int accumulate)
{
    const int Kp = K1 + K2;
    if (A2 == NULL)
        K2 = 0;
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nc = pg_min(NR, N - n0);
        const T *panel = P + (ptrdiff_t)(n0 / NR) * Kp * NR;
        for (int i = 0; i < M; i++) {
            const T *a = A1 + (ptrdiff_t)i * lda1;
            T acc[NR];
            for (int j = 0; j < NR; j++)
                acc[j] = 0;
            for (int k = 0; k < K1; k++) {
                const T ak = a[k];
                const T *b = panel + (ptrdiff_t)k * NR;
                for (int j = 0; j < NR; j++)
                    acc[j] += ak * b[j];
            }
            for (int k = 0; k < K2; k++) {
                const T ak = A2[(ptrdiff_t)i * lda2 + k];
                const T *b = panel + (ptrdiff_t)(K1 + k) * NR;
                for (int j = 0; j < NR; j++)
                    acc[j] += ak * b[j];
            }
            T *c = C + (ptrdiff_t)i * ldc + n0;
            for (int j = 0; j < nc; j++)
                c[j] = accumulate ? c[j] + acc[j] : acc[j];
        }
    }
}

static void PG_FN(gemm_generic)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    PG_FN(gemm2_generic)(M, K, 0, N, A, lda, NULL, 0, P, C, ldc, accumulate);
}

/* Aᵀ, plain C: C[i, :] = Σ_k A[k, i] · P[k, :], one row of C at a time. */
static void PG_FN(gemm_at_generic)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                   const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    for (int n0 = 0; n0 < N; n0 += NR) {
        const int nc = pg_min(NR, N - n0);
        const T *panel = P + (ptrdiff_t)(n0 / NR) * K * NR;
        for (int i = 0; i < M; i++) {
            T acc[NR];
            for (int j = 0; j < NR; j++)
                acc[j] = 0;
            for (int k = 0; k < K; k++) {
                const T ak = A[(ptrdiff_t)k * lda + i];
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
#define MR_WIDE 4
#ifndef PG_AT_MR_AVX512
#define PG_AT_MR_AVX512 8
#endif
#define MR_AT PG_AT_MR_AVX512
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
#undef MR_WIDE
#undef MR_AT
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
#define MR_WIDE 2
#define MR_AT 6
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
#undef MR_WIDE
#undef MR_AT
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
/* Kernel pass: T, NR, PG_SUF plus the ISA's PG_ISA, PG_TARGET, MR, MR_WIDE, V, LANES,
 * VOP, VMASK* are defined. A column block is CW = 2·LANES columns: a whole panel for
 * AVX-512, half of one for AVX2. */

#define PG_KN(name) PG_CAT(PG_CAT(name, PG_ISA), PG_SUF)
#define CW (2 * LANES)

/* C[0:mr, 0:ncols] (+)= [A1[0:mr, 0:kc1], A2[0:mr, 0:kc2]] · B[0:kc1+kc2, 0:nb·CW], where
 * B is nb (1 or 2) column blocks, at b0 and b1 (b1 unused when nb = 1), each with row
 * stride NR (panel slices); their C columns are adjacent. The k loop reads A from A1 for
 * the first kc1 rows of B and from A2 for the next kc2 (kc2 = 0: one matrix A), so two
 * products into the same C (x_t·W_ihᵀ + h_{t-1}·W_hhᵀ) share one pass of the C tile.
 * mr and nb are compile-time constants after inlining (the switches below), so the
 * accumulators live in registers. ncols < nb·CW only in the last panel: masked C access,
 * never touching memory past column N. */
PG_INLINE PG_TARGET void PG_KN(tile)(const int mr, const int nb, const int kc1,
                                     const T *restrict a1, const ptrdiff_t lda1,
                                     const int kc2, const T *restrict a2,
                                     const ptrdiff_t lda2,
                                     const T *restrict b0, const T *restrict b1,
                                     T *restrict c, const ptrdiff_t ldc, const int ncols,
                                     const int load_c)
{
    const int nv = 2 * nb; /* vectors per row */
    /* An FMA has a latency of ~4 cycles and 1-2 issue per cycle, so ~8 independent
     * accumulator chains keep the FMA units busy. With fewer (mr·nv < 8) the k loop is
     * split over S interleaved accumulator sets, summed at the end. */
    enum { SMAX = 4 };
    const int S = mr * nv >= 8 ? 1 : mr * nv >= 4 ? 2 : 4;
    V acc[SMAX][MR][4];
#pragma GCC unroll 4
    for (int s = 0; s < S; s++)
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[s][r][v] = VOP(setzero)();

    /* One k step into accumulator set s: A[r, ka] of the matrix at a (stride lda) times
     * row kb of B. */
#define PG_STEP(a, lda, ka, kb, s)                                                       \
    do {                                                                                 \
        V bv[4];                                                                         \
        _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {                           \
            bv[v] = VOP(loadu)((v < 2 ? b0 : b1) + (ptrdiff_t)(kb) * NR + (v & 1) * LANES); \
            PG_IN_REGISTER(bv[v]);                                                       \
        }                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < mr; r++) {                           \
            const V ar = VOP(set1)((a)[r * (lda) + (ka)]);                               \
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++)                         \
                acc[s][r][v] = VOP(fmadd)(ar, bv[v], acc[s][r][v]);                      \
        }                                                                                \
    } while (0)

    /* The C tile is read (accumulate) and written only after the k loop; with a
     * power-of-two ldc its rows share an L1 set and are by then usually in L2 or L3, so
     * fetch them now, while the k loop runs. Measured on Zen 4 (1 thread, M = 512,
     * K = 128, N = 2048): +14-17% in f32 and f64; the slab copy of A (rows of a
     * power-of-two lda into a padded stack buffer) was tried as well and was 8-18% slower. */
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm_prefetch((const char *)(c + r * ldc + v * LANES), _MM_HINT_T0);

    int k = 0;
    for (; k + S <= kc1; k += S) {
#pragma GCC unroll 4
        for (int s = 0; s < S; s++)
            PG_STEP(a1, lda1, k + s, k + s, s);
    }
    for (; k < kc1; k++)
        PG_STEP(a1, lda1, k, k, 0);
    k = 0;
    for (; k + S <= kc2; k += S) {
#pragma GCC unroll 4
        for (int s = 0; s < S; s++)
            PG_STEP(a2, lda2, k + s, kc1 + k + s, s);
    }
    for (; k < kc2; k++)
        PG_STEP(a2, lda2, k, kc1 + k, 0);
#undef PG_STEP

#pragma GCC unroll 4
    for (int s = 1; s < S; s++)
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[0][r][v] = VOP(add)(acc[0][r][v], acc[s][r][v]);

    if (ncols == nb * CW) {
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                T *cv = c + r * ldc + v * LANES;
                if (load_c)
                    acc[0][r][v] = VOP(add)(acc[0][r][v], VOP(loadu)(cv));
                VOP(storeu)(cv, acc[0][r][v]);
            }
    } else {
        VMASK_T m[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            const int n = ncols - v * LANES;
            m[v] = VMASK(n < 0 ? 0 : n > LANES ? LANES : n);
        }
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                T *cv = c + r * ldc + v * LANES;
                if (load_c)
                    acc[0][r][v] = VOP(add)(acc[0][r][v], VLOAD_MASK(cv, m[v]));
                VSTORE_MASK(cv, m[v], acc[0][r][v]);
            }
    }
}

/* Where column block `cb` (columns cb·CW ...) starts in the packed buffer. */
#define PG_BLOCK(P, K, cb) \
    ((P) + (ptrdiff_t)((cb) * CW / NR) * (K) * NR + ((cb) * CW) % NR)

#define PG_TILE_CASE(m, nb) \
    case m: PG_KN(tile)(m, nb, kc1, a1, lda1, kc2, a2, lda2, b0, b1, c, ldc, ncols, load_c); \
            break

/* The C block of the panel at column n0 (M rows × NR columns), fetched into L2 one
 * panel ahead of its tiles. */
PG_INLINE PG_TARGET void PG_KN(prefetch_c_panel)(int M, int N, int n0, const T *C,
                                                 ptrdiff_t ldc)
{
    const int ncols = pg_min(NR, N - n0);
    for (int r = 0; r < M; r++) {
        const char *row = (const char *)(C + (ptrdiff_t)r * ldc + n0);
        for (int b = 0; b < ncols * (int)sizeof(T); b += 64)
            _mm_prefetch(row + b, _MM_HINT_T1);
        _mm_prefetch(row + ncols * (int)sizeof(T) - 1, _MM_HINT_T1);
    }
}

/* General case. Loop order: panel (NR columns) → k block → column block (2 per panel
 * with AVX2) → MR-row block. The panel's k block stays in L2 (see PG_KC_MAX) while the
 * row blocks of A pass over it; from memory or L3 the packed buffer is read once, front
 * to back, which the hardware prefetcher follows. The k range is K1 rows of P against
 * A1 then K2 against A2 (K2 = 0 when there is no A2); a k block may straddle the two,
 * and Kp = K1 + K2 is the panels' length whatever is used of it. */
static PG_TARGET void PG_KN(gemm_rows)(int M, int K1, int K2, int Kp, int N, const T *A1,
                                       ptrdiff_t lda1, const T *A2, ptrdiff_t lda2,
                                       const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    const int K = K1 + K2;
    const int kstep = pg_k_step(M, K, MR);
    if (pg_prefetch_panels)
        PG_KN(prefetch_c_panel)(M, N, 0, C, ldc);
    for (int n0 = 0; n0 < N; n0 += NR) {
        if (pg_prefetch_panels && n0 + NR < N)
            PG_KN(prefetch_c_panel)(M, N, n0 + NR, C, ldc);
        for (int k0 = 0; k0 < K; k0 += kstep) {
            const int kc = pg_min(kstep, K - k0);
            const int kc1 = k0 >= K1 ? 0 : pg_min(kc, K1 - k0), kc2 = kc - kc1;
            const int k2 = k0 + kc1 - K1;     /* first column of A2 in this block */
            const int load_c = accumulate || k0 > 0;
            for (int j0 = n0; j0 < n0 + NR && j0 < N; j0 += CW) {
                const int ncols = pg_min(CW, N - j0);
                const T *b0 = PG_BLOCK(P, Kp, j0 / CW) + (ptrdiff_t)k0 * NR, *b1 = b0;
                for (int i0 = 0; i0 < M; i0 += MR) {
                    const T *a1 = A1 + (ptrdiff_t)i0 * lda1 + (kc1 ? k0 : 0);
                    const T *a2 = kc2 ? A2 + (ptrdiff_t)i0 * lda2 + k2 : a1;
                    T *c = C + (ptrdiff_t)i0 * ldc + j0;
                    switch (pg_min(MR, M - i0)) {
#if MR >= 8
                        PG_TILE_CASE(8, 1);
                        PG_TILE_CASE(7, 1);
#endif
                        PG_TILE_CASE(6, 1);
                        PG_TILE_CASE(5, 1);
                        PG_TILE_CASE(4, 1);
                        PG_TILE_CASE(3, 1);
                        PG_TILE_CASE(2, 1);
                        default: PG_TILE_CASE(1, 1);
                    }
                }
            }
        }
    }
}

/* Few rows (M ≤ MR_WIDE): each packed value feeds so few FMAs that the kernel is bound
 * by loads, mostly by the stream of packed values from L2 (at M = 1 that stream is the
 * limit: 2 flops per 4 bytes). Tiles of two column blocks (two concurrent streams)
 * halve the broadcasts of A per FMA: measured 3-12% faster than one block at M = 1-4
 * on Zen 4. (Four blocks gained nothing more.) */
static PG_TARGET void PG_KN(gemm_few)(int M, int K1, int K2, int Kp, int N, const T *A1,
                                      ptrdiff_t lda1, const T *A2, ptrdiff_t lda2,
                                      const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    const int kc1 = K1, kc2 = K2, load_c = accumulate;
    const T *a1 = A1, *a2 = K2 ? A2 : A1;
    for (int j0 = 0; j0 < N; j0 += 2 * CW) {
        const int ncols = pg_min(2 * CW, N - j0);
        const T *b0 = PG_BLOCK(P, Kp, j0 / CW), *b1 = b0;
        T *c = C + j0;
        if (ncols > CW) {
            b1 = PG_BLOCK(P, Kp, j0 / CW + 1);
            switch (M) {
#if MR_WIDE >= 4
                PG_TILE_CASE(4, 2);
                PG_TILE_CASE(3, 2);
#endif
                PG_TILE_CASE(2, 2);
                default: PG_TILE_CASE(1, 2);
            }
        } else {
            switch (M) {
#if MR_WIDE >= 4
                PG_TILE_CASE(4, 1);
                PG_TILE_CASE(3, 1);
#endif
                PG_TILE_CASE(2, 1);
                default: PG_TILE_CASE(1, 1);
            }
        }
    }
}

/* C (+)= [A1, A2] · P, P packed as K1 + K2 rows; A2 == NULL: C (+)= A1 · P[0:K1]. */
static PG_TARGET void PG_KN(gemm2)(int M, int K1, int K2, int N, const T *A1, ptrdiff_t lda1,
                                   const T *A2, ptrdiff_t lda2, const T *P, T *C,
                                   ptrdiff_t ldc, int accumulate)
{
    const int Kp = K1 + K2;
    if (A2 == NULL)
        K2 = 0;
    if (M <= MR_WIDE)
        PG_KN(gemm_few)(M, K1, K2, Kp, N, A1, lda1, A2, lda2, P, C, ldc, accumulate);
    else
        PG_KN(gemm_rows)(M, K1, K2, Kp, N, A1, lda1, A2, lda2, P, C, ldc, accumulate);
}

static PG_TARGET void PG_KN(gemm)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                  const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    PG_KN(gemm2)(M, K, 0, N, A, lda, NULL, 0, P, C, ldc, accumulate);
}

/* ---- Aᵀ: C (M × N) (+)= Aᵀ · P, A stored K × M. ---- */

/* C[0:mrows, 0:ncols] (+)= Ã[0:kc, 0:MR_AT]ᵀ · B[0:kc, 0:CW]: Ã is a packed slab
 * (a[k·MR_AT + r], rows past mrows zero), B a column block of a panel (row stride NR).
 * MR_AT × 2 accumulators always; only the first mrows rows are stored. */
PG_INLINE PG_TARGET void PG_KN(tile_at)(const int kc, const T *restrict a,
                                        const T *restrict b, T *restrict c,
                                        const ptrdiff_t ldc, const int mrows,
                                        const int ncols, const int load_c)
{
    V acc[MR_AT][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR_AT; r++)
        acc[r][0] = acc[r][1] = VOP(setzero)();
    for (int k = 0; k < kc; k++) {
        V b0 = VOP(loadu)(b + (ptrdiff_t)k * NR), b1 = VOP(loadu)(b + (ptrdiff_t)k * NR + LANES);
        PG_IN_REGISTER(b0);
        PG_IN_REGISTER(b1);
#pragma GCC unroll 16
        for (int r = 0; r < MR_AT; r++) {
            const V ar = VOP(set1)(a[k * MR_AT + r]);
            acc[r][0] = VOP(fmadd)(ar, b0, acc[r][0]);
            acc[r][1] = VOP(fmadd)(ar, b1, acc[r][1]);
        }
    }
    if (ncols == CW) {
#pragma GCC unroll 16
        for (int r = 0; r < MR_AT; r++)
            if (r < mrows)
#pragma GCC unroll 2
                for (int v = 0; v < 2; v++) {
                    T *cv = c + r * ldc + v * LANES;
                    V x = acc[r][v];
                    if (load_c)
                        x = VOP(add)(x, VOP(loadu)(cv));
                    VOP(storeu)(cv, x);
                }
    } else {
        VMASK_T m[2];
        m[0] = VMASK(ncols > LANES ? LANES : ncols);
        m[1] = VMASK(ncols > LANES ? ncols - LANES : 0);
#pragma GCC unroll 16
        for (int r = 0; r < MR_AT; r++)
            if (r < mrows)
#pragma GCC unroll 2
                for (int v = 0; v < 2; v++) {
                    T *cv = c + r * ldc + v * LANES;
                    V x = acc[r][v];
                    if (load_c)
                        x = VOP(add)(x, VLOAD_MASK(cv, m[v]));
                    VSTORE_MASK(cv, m[v], x);
                }
    }
}

/* Loop order: k block → row block (MC rows of A packed into `buf`, in L2) → column block
 * (its k slice, kc·NR values, stays in L1/L2 across the row block's slabs) → slab. */
static PG_TARGET void PG_KN(gemm_at)(int M, int K, int N, const T *A, ptrdiff_t lda,
                                     const T *P, T *C, ptrdiff_t ldc, int accumulate)
{
    enum { KC = PG_AT_KC_BYTES / sizeof(T), MC = PG_AT_MC_SLABS * MR_AT };
    T buf[MC * KC] __attribute__((aligned(64)));
    const int kstep = pg_at_k_step(K, KC);
    for (int i0 = 0; i0 < M; i0 += MC) {
        for (int k0 = 0; k0 < K; k0 += kstep) {
            const int kc = pg_min(kstep, K - k0);
            const int load_c = accumulate || k0 > 0;
            const int mc = pg_min(MC, M - i0);
            const int nslabs = (mc + MR_AT - 1) / MR_AT;
            /* Pack A[k0:k0+kc, i0:i0+mc] slab by slab; rows of A are read in order. */
            const T *src = A + (ptrdiff_t)k0 * lda + i0;
            if (mc == MC) {
                for (int k = 0; k < kc; k++, src += lda)
#pragma GCC unroll 16
                    for (int s = 0; s < PG_AT_MC_SLABS; s++)
                        memcpy(buf + (s * kc + k) * MR_AT, src + s * MR_AT, MR_AT * sizeof(T));
            } else {
                for (int k = 0; k < kc; k++, src += lda)
                    for (int s = 0; s < nslabs; s++) {
                        T *d = buf + (s * kc + k) * MR_AT;
                        const int r1 = pg_min(MR_AT, mc - s * MR_AT);
                        for (int r = 0; r < r1; r++)
                            d[r] = src[s * MR_AT + r];
                        for (int r = r1; r < MR_AT; r++)
                            d[r] = 0;
                    }
            }
            for (int j0 = 0; j0 < N; j0 += CW) {
                const int ncols = pg_min(CW, N - j0);
                const T *b = PG_BLOCK(P, K, j0 / CW) + (ptrdiff_t)k0 * NR;
                for (int s = 0; s < nslabs; s++)
                    PG_KN(tile_at)(kc, buf + s * kc * MR_AT, b,
                                   C + (ptrdiff_t)(i0 + s * MR_AT) * ldc + j0, ldc,
                                   pg_min(MR_AT, mc - s * MR_AT), ncols, load_c);
            }
        }
    }
}

#undef PG_TILE_CASE
#undef PG_BLOCK
#undef PG_KN
#undef CW

#endif /* passes */
