/* The gate loops (forward and backward), sigmoid and tanh in AVX2+FMA intrinsics: the
 * template gates_simd_impl.h at 8 floats / 4 doubles per vector.
 *
 * Why: the compiler-vectorised C loops (gates_impl.h) spend most of their time in exp.
 * AVX2 has neither vroundscale nor vscalef, so k = round(x/ln2) comes from the shifter
 * trick (x·log2e + 1.5·2^23 leaves k in the low mantissa bits; one FMA and one subtract)
 * and 2^k from the same bits shifted into the exponent field (one integer add, one
 * shift): the arithmetic of gates.c, without the compiler's detours. The polynomial, the
 * clamps and the formulas are those of gates.c, so results agree with the plain C loop
 * to a few ulp (the tests run both).
 */
#include "gates_simd.h"
#include "gates_flags.h"

#if CLSTM_GATES_SIMD
#include <immintrin.h>

#define SIMD_FN __attribute__((target("avx2,fma")))
#define SIMD_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

int clstm_gates_avx2_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#define REAL float
#define V __m256
#define VOP(op) _mm256_##op##_ps
#define MASK __m256i
#define LANES 8
#define SUF(name) name##_f32
#define ISA_SUF(name) name##_avx2_f32
#define VLOAD_MASKED(m, p) _mm256_maskload_ps(p, m)
#define VSTORE_MASKED(p, m, v) _mm256_maskstore_ps(p, m, v)
#define EXP_MAX 88.0f
#define EXP_MIN -87.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.428606765330187045e-06f
#define SHIFTER 12582912.0f /* 0x1.8p23 */
SIMD_INLINE MASK SUF(tail_mask)(int remaining)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(remaining),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* t + 1.5·2^23 rounds t to an integer (|t| < 2^22), then subtracting it back is exact. */
SIMD_INLINE V SUF(round_v)(V t)
{
    return VOP(sub)(VOP(add)(t, VOP(set1)(SHIFTER)), VOP(set1)(SHIFTER));
}
/* 2^k from k + 1.5·2^23, whose low bits hold k: (k + 127) << 23 is 2^k's bit pattern
 * (the shifter's own bits shift out). k is in [-126, 127] after the clamps. */
SIMD_INLINE V SUF(scale_v)(V p, V k)
{
    __m256i bits = _mm256_castps_si256(VOP(add)(k, VOP(set1)(SHIFTER)));
    bits = _mm256_slli_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(127)), 23);
    return VOP(mul)(p, _mm256_castsi256_ps(bits));
}
#include "gates_simd_impl.h"
#undef SHIFTER

#define REAL double
#define V __m256d
#define VOP(op) _mm256_##op##_pd
#define MASK __m256i
#define LANES 4
#define SUF(name) name##_f64
#define ISA_SUF(name) name##_avx2_f64
#define VLOAD_MASKED(m, p) _mm256_maskload_pd(p, m)
#define VSTORE_MASKED(p, m, v) _mm256_maskstore_pd(p, m, v)
#define EXP_MAX 708.0
#define EXP_MIN -708.0
#define LOG2E 1.4426950408889634074
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#define SHIFTER 6755399441055744.0 /* 0x1.8p52 */
SIMD_INLINE MASK SUF(tail_mask)(int remaining)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(remaining), _mm256_setr_epi64x(0, 1, 2, 3));
}
SIMD_INLINE V SUF(round_v)(V t)
{
    return VOP(sub)(VOP(add)(t, VOP(set1)(SHIFTER)), VOP(set1)(SHIFTER));
}
/* (k + 1023) << 52, k in [-1021, 1021] after the clamps. */
SIMD_INLINE V SUF(scale_v)(V p, V k)
{
    __m256i bits = _mm256_castpd_si256(VOP(add)(k, VOP(set1)(SHIFTER)));
    bits = _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52);
    return VOP(mul)(p, _mm256_castsi256_pd(bits));
}
#include "gates_simd_impl.h"

#else /* no intrinsics code in this build: gates.c never calls the functions below */

int clstm_gates_avx2_supported(void) { return 0; }
CLSTM_GATES_SIMD_STUBS(avx2, float, f32)
CLSTM_GATES_SIMD_STUBS(avx2, double, f64)

#endif
