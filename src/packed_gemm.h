/* Small-M GEMM against a right-hand matrix packed once and reused many times.
 *
 * The LSTM multiplies by the same W_hh at every time step, with few rows per thread
 * (M = 1..64). A BLAS call per step re-packs W_hh each time and is tuned for large M;
 * here the caller packs the right-hand matrix P (K × N) once per sequence and then
 * runs clstm_packed_gemm_* every step, from any number of threads at once (the packed
 * buffer is only read; nothing is allocated or written besides C).
 *
 * Packed layout (the same whichever CPU kernel runs, so a buffer packed once is valid
 * everywhere): N is cut into panels of NR columns (NR = CLSTM_PACKED_NR_F32 = 32 floats
 * or CLSTM_PACKED_NR_F64 = 16 doubles: 128 bytes, two cache lines, per k), and
 *
 *     packed[(p·K + k)·NR + j] = P[k, p·NR + j],   zero when p·NR + j ≥ N,
 *
 * i.e. panel after panel, each K rows of NR contiguous values. Any alignment works;
 * 64-byte alignment saves split loads.
 *
 * Uses: forward   G (M × 4H) += h (M × H) · W_hhᵀ  -> pack(K=H, N=4H, W_hh, ld=H, src_is_nk=1)
 *       backward  dh (M × H) += da (M × 4H) · W_hh -> pack(K=4H, N=H, W_hh, ld=H, src_is_nk=0)
 */
#ifndef CLSTM_PACKED_GEMM_H
#define CLSTM_PACKED_GEMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLSTM_PACKED_NR_F32 32
#define CLSTM_PACKED_NR_F64 16

/* Number of elements (not bytes) of the packed form of a K × N matrix. */
size_t clstm_packed_size_f32(int K, int N);
size_t clstm_packed_size_f64(int K, int N);

/* Pack P (K × N). src_is_nk = 0: src is P, row-major K × N, leading dimension ld (≥ N).
 * src_is_nk = 1: src is Pᵀ, row-major N × K, leading dimension ld (≥ K). `packed` holds
 * clstm_packed_size_*(K, N) elements; every one of them is written. */
void clstm_pack_f32(int K, int N, const float *src, int ld, int src_is_nk, float *packed);
void clstm_pack_f64(int K, int N, const double *src, int ld, int src_is_nk, double *packed);

/* C (M × N, row-major, leading dimension ldc) = A (M × K, row-major, lda) · P,
 * plus the old C when accumulate != 0. With K = 0 the product is zero. */
void clstm_packed_gemm_f32(int M, int K, int N, const float *A, int lda,
                           const float *packed, float *C, int ldc, int accumulate);
void clstm_packed_gemm_f64(int M, int K, int N, const double *A, int lda,
                           const double *packed, double *C, int ldc, int accumulate);

/* Two products into one C in one pass: C (M × N, ldc) = [A1 (M × K1, lda1), A2 (M × K2,
 * lda2)] · P, plus the old C when accumulate != 0, where P ((K1 + K2) × N) is packed
 * from two matrices by clstm_pack_cat_*: its first K1 rows from src1, the next K2 from
 * src2 (each as in clstm_pack_*: row-major K × N, or its transpose when src_is_nk),
 * in clstm_packed_size_*(K1 + K2, N) elements. A2 == NULL stands for zeros (only A1's
 * part is computed). Use: the LSTM step's gates x_t·W_ihᵀ + h_{t-1}·W_hhᵀ, with
 * P = [W_ihᵀ; W_hhᵀ] packed once: each C tile is loaded and stored once per step, not
 * twice, and the setup of a call is paid once. */
void clstm_pack_cat_f32(int K1, int K2, int N, const float *src1, int ld1, const float *src2,
                        int ld2, int src_is_nk, float *packed);
void clstm_pack_cat_f64(int K1, int K2, int N, const double *src1, int ld1,
                        const double *src2, int ld2, int src_is_nk, double *packed);
void clstm_packed_gemm2_f32(int M, int K1, int K2, int N, const float *A1, int lda1,
                            const float *A2, int lda2, const float *packed, float *C, int ldc,
                            int accumulate);
void clstm_packed_gemm2_f64(int M, int K1, int K2, int N, const double *A1, int lda1,
                            const double *A2, int lda2, const double *packed, double *C,
                            int ldc, int accumulate);

/* C (M × N, row-major, ldc) = Aᵀ · P, plus the old C when accumulate != 0, where A is
 * stored row-major K × M (leading dimension lda ≥ M): C[i, j] = Σ_k A[k, i] · P[k, j].
 * Same packed P as above; no allocation (a stack buffer of up to 128 KiB), thread-safe.
 * With K = 0 the product is zero.
 * Use: LSTM weight gradients over all T·B rows, dW_ih (4H × I) += daᵀ · X with
 * A = da (T·B × 4H, lda = 4H) and P = X packed by pack(K=T·B, N=I, X, ld=I, 0). */
void clstm_packed_gemm_at_f32(int M, int K, int N, const float *A, int lda,
                              const float *packed, float *C, int ldc, int accumulate);
void clstm_packed_gemm_at_f64(int M, int K, int N, const double *A, int lda,
                              const double *packed, double *C, int ldc, int accumulate);

/* Which kernel runs: CLSTM_PG_GENERIC (plain C), CLSTM_PG_AVX2 (AVX2+FMA) or
 * CLSTM_PG_AVX512 (AVX-512F), chosen once from the CPU's features. */
enum { CLSTM_PG_AUTO = -1, CLSTM_PG_GENERIC = 0, CLSTM_PG_AVX2 = 1, CLSTM_PG_AVX512 = 2 };
int clstm_packed_gemm_isa(void);
const char *clstm_packed_gemm_isa_name(void);
/* For tests and benchmarks: force one kernel (or CLSTM_PG_AUTO for the CPU's best).
 * Returns the kernel now in use, or -1 (nothing changed) if the CPU or the build lacks
 * it. Safe at any time: a call already running finishes with the kernel it started with
 * (the kernels agree up to rounding). */
int clstm_packed_gemm_select(int isa);

/* Whether gemm fetches each panel's C block into L2 one panel ahead (1, the default) or
 * not (0); returns the previous setting. For A/B measurements. */
int clstm_packed_gemm_set_prefetch_c(int enabled);

#ifdef __cplusplus
}
#endif
#endif
