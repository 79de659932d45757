/* The LSTM's fused element-wise loops, for float and double from one template
 * (gates_impl.h, included twice). See gates.h for the contract.
 *
 * Why plain C: it is the code of the generic level (any x86-64, any other CPU) and the
 * reference the intrinsics versions (gates_avx2.c, gates_avx512.c, one template) are
 * checked against. GCC vectorises these loops, including exp, only if exp is written as
 * straight-line arithmetic (libm's expf is a call GCC cannot vectorise without
 * -ffast-math). The gate loops are compiled for the baseline only, so that forcing the
 * generic level (CLSTM_ISA=generic) runs what a CPU without AVX2 runs; the column sums
 * and the peephole gradients (memory-bound passes) keep function multi-versioning:
 * baseline SSE2, AVX2+FMA (x86-64-v3) and AVX-512 (x86-64-v4) clones, the loader picks
 * one for the CPU. ISA levels, not arch=haswell etc.: those test the CPU model, so an AMD
 * CPU with AVX-512 would get the scalar default.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "gates.h"
#include "gates_simd.h"
#include "gates_flags.h"

/* Whether OMP_WAIT_POLICY asks idle OpenMP threads to sleep: then every barrier must
 * wake a sleeping thread (read at each call: cheap next to a layer's work). */
int clstm_omp_passive_wait(void)
{
    const char *policy = getenv("OMP_WAIT_POLICY");
    const char *passive = "passive";
    if (policy == NULL)
        return 0;
    for (; *passive; policy++, passive++)
        if (tolower((unsigned char)*policy) != *passive)
            return 0;
    return *policy == '\0';
}

#ifdef _OPENMP
#include <omp.h>
int clstm_omp_max_threads(void) { return omp_get_max_threads(); }
int clstm_have_openmp(void) { return 1; }
int clstm_omp_thread_num(void) { return omp_get_thread_num(); }
int clstm_omp_num_threads(void) { return omp_get_num_threads(); }
void clstm_omp_barrier(void)
{
#pragma omp barrier
}
#else
int clstm_omp_max_threads(void) { return 1; }
int clstm_have_openmp(void) { return 0; }
int clstm_omp_thread_num(void) { return 0; }
int clstm_omp_num_threads(void) { return 1; }
void clstm_omp_barrier(void) {}
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && defined(__GLIBC__) && !defined(CLSTM_NO_CLONES) && (__GNUC__ >= 12)
#define CLSTM_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define CLSTM_CLONES
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* exp(x) for float: round x/ln2 to an integer k with the shifter trick (adding 1.5·2^23
 * leaves k in the low mantissa bits), reduce r = x - k·ln2 in two parts (|r| ≤ ln2/2),
 * a degree-5 polynomial fitted for least relative error on that range (7.5e-8, 0.63 ulp;
 * the degree-7 Taylor polynomial it replaced was more exact than float can hold, and its
 * two more FMAs per exp made the gate loop 12% slower: sigmoid now within 2.3 ulp of the
 * exact value instead of 1.3, tanh 1.6 ulp instead of 1.5), and 2^k built from its bits.
 * The clamp keeps 2^k a normal number; NaN passes through the clamps. */
ALWAYS_INLINE float exp_f32(float x)
{
    const float shifter = 12582912.0f; /* 0x1.8p23 */
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float kf = x * 1.44269504088896341f + shifter;
    int32_t kbits, sbits;
    memcpy(&kbits, &kf, 4);
    memcpy(&sbits, &shifter, 4);
    int32_t k = kbits - sbits;
    kf -= shifter;
    float r = x - kf * 0.693145751953125f;
    r = r - kf * 1.428606765330187045e-06f;
    float p = 0.00829765074806159f;
    p = p * r + 0.04191538581951764f;
    p = p * r + 0.16667574817608277f;
    p = p * r + 0.49998894818154155f;
    p = p * r + 0.9999996919580132f;
    p = p * r + 1.000000071657714f;
    int32_t scale_bits = (k + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, 4);
    return p * scale;
}

/* exp(x) for double: the same scheme, shifter 1.5·2^52, degree-13 polynomial
 * (relative error < 1e-17 on |r| ≤ ln2/2). */
ALWAYS_INLINE double exp_f64(double x)
{
    const double shifter = 6755399441055744.0; /* 0x1.8p52 */
    x = x > 708.0 ? 708.0 : x;
    x = x < -708.0 ? -708.0 : x;
    double kf = x * 1.4426950408889634074 + shifter;
    int64_t kbits, sbits;
    memcpy(&kbits, &kf, 8);
    memcpy(&sbits, &shifter, 8);
    int64_t k = kbits - sbits;
    kf -= shifter;
    double r = x - kf * 6.93147180369123816490e-01;
    r = r - kf * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t scale_bits = (k + 1023) << 52;
    double scale;
    memcpy(&scale, &scale_bits, 8);
    return p * scale;
}

ALWAYS_INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
ALWAYS_INLINE double sigmoid_f64(double x) { return 1.0 / (1.0 + exp_f64(-x)); }
/* tanh(x) = 2σ(2x) - 1: saturates cleanly to ±1; absolute error near 0 is one ulp of 1. */
ALWAYS_INLINE float tanh_f32(float x) { return 2.0f / (1.0f + exp_f32(-2.0f * x)) - 1.0f; }
ALWAYS_INLINE double tanh_f64(double x) { return 2.0 / (1.0 + exp_f64(-2.0 * x)) - 1.0; }

/* The gate loops, sigmoid and tanh also exist in intrinsics (gates_avx512.c,
 * gates_avx2.c: one template at two vector widths); the public entry points of
 * gates_impl.h run the level in gate_level. -1: not decided yet (the best the CPU runs);
 * several threads may race to decide, all storing the same value. */
static int gate_level = -1;

int clstm_gates_level_supported(int level)
{
    switch (level) {
    case CLSTM_GATES_C:
        return 1;
#if CLSTM_GATES_SIMD
    case CLSTM_GATES_AVX2:
        return clstm_gates_avx2_supported();
    case CLSTM_GATES_AVX512:
        return clstm_gates_avx512_supported();
#endif
    default:
        return 0;
    }
}

int clstm_gates_level(void)
{
    int level = __atomic_load_n(&gate_level, __ATOMIC_RELAXED);
    if (level < 0) {
        level = CLSTM_GATES_AVX512;
        while (!clstm_gates_level_supported(level))
            level--;
        __atomic_store_n(&gate_level, level, __ATOMIC_RELAXED);
    }
    return level;
}

int clstm_gates_set_level(int level)
{
    int old = clstm_gates_level();
    if (level < 0) {
        __atomic_store_n(&gate_level, -1, __ATOMIC_RELAXED);
        return old;
    }
    if (!clstm_gates_level_supported(level))
        return -1;
    __atomic_store_n(&gate_level, level, __ATOMIC_RELAXED);
    return old;
}

#define REAL float
#define SUF(name) name##_f32
#include "gates_impl.h"
#undef REAL
#undef SUF

#define REAL double
#define SUF(name) name##_f64
#include "gates_impl.h"
#undef REAL
#undef SUF
