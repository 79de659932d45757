/* The gate loops and sigmoid/tanh in intrinsics, one template (gates_simd_impl.h) at two
 * vector widths: AVX-512 (gates_avx512.c) and AVX2+FMA (gates_avx2.c), chosen at run time
 * by gates.c from the ISA level in use. Same contract as the functions of the same name
 * without the ISA suffix in gates.h. */
#ifndef CLSTM_GATES_SIMD_H
#define CLSTM_GATES_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CLSTM_NO_CLONES)
#define CLSTM_GATES_SIMD 1
#else
#define CLSTM_GATES_SIMD 0
#endif

/* Whether this build has the code and the CPU (and OS) can run it. */
int clstm_gates_avx512_supported(void);
int clstm_gates_avx2_supported(void);

#define CLSTM_GATES_SIMD_DECLARE(ISA, REAL, SUF)                                            \
    void clstm_gates_forward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,          \
                                                 REAL *gates, const REAL *bias,            \
                                                 const REAL *peephole, const REAL *c_prev, \
                                                 REAL *c, REAL *h);                        \
    void clstm_gates_backward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,         \
                                                  REAL *gates, const REAL *peephole,       \
                                                  const REAL *c_prev, const REAL *c,       \
                                                  const REAL *dh, REAL *dc);               \
    void clstm_gru_gates_forward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,      \
                                                     REAL *gates, REAL *gh,                \
                                                     const REAL *b_ih, const REAL *b_hh,   \
                                                     const REAL *h_prev, REAL *h);         \
    void clstm_gru_gates_backward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,     \
                                                      REAL *gates, REAL *gh,               \
                                                      const REAL *h_prev, const REAL *dh,  \
                                                      REAL *dh_prev, int accumulate);      \
    void clstm_sigmoid_##ISA##_##SUF(long n, const REAL *x, REAL *y);                      \
    void clstm_tanh_##ISA##_##SUF(long n, const REAL *x, REAL *y);

CLSTM_GATES_SIMD_DECLARE(avx512, float, f32)
CLSTM_GATES_SIMD_DECLARE(avx512, double, f64)
CLSTM_GATES_SIMD_DECLARE(avx2, float, f32)
CLSTM_GATES_SIMD_DECLARE(avx2, double, f64)

/* For builds without the intrinsics code: functions gates.c never calls. */
#define CLSTM_GATES_SIMD_STUBS(ISA, REAL, SUF)                                              \
    void clstm_gates_forward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,          \
                                                 REAL *gates, const REAL *bias,            \
                                                 const REAL *peephole, const REAL *c_prev, \
                                                 REAL *c, REAL *h)                         \
    {                                                                                       \
        (void)rows, (void)H, (void)u0, (void)u1, (void)gates, (void)bias, (void)peephole;  \
        (void)c_prev, (void)c, (void)h;                                                     \
    }                                                                                       \
    void clstm_gates_backward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,         \
                                                  REAL *gates, const REAL *peephole,       \
                                                  const REAL *c_prev, const REAL *c,       \
                                                  const REAL *dh, REAL *dc)                \
    {                                                                                       \
        (void)rows, (void)H, (void)u0, (void)u1, (void)gates, (void)peephole;              \
        (void)c_prev, (void)c, (void)dh, (void)dc;                                          \
    }                                                                                       \
    void clstm_gru_gates_forward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,      \
                                                     REAL *gates, REAL *gh,                \
                                                     const REAL *b_ih, const REAL *b_hh,   \
                                                     const REAL *h_prev, REAL *h)          \
    {                                                                                       \
        (void)rows, (void)H, (void)u0, (void)u1, (void)gates, (void)gh, (void)b_ih;         \
        (void)b_hh, (void)h_prev, (void)h;                                                  \
    }                                                                                       \
    void clstm_gru_gates_backward_units_##ISA##_##SUF(int rows, int H, int u0, int u1,     \
                                                      REAL *gates, REAL *gh,               \
                                                      const REAL *h_prev, const REAL *dh,  \
                                                      REAL *dh_prev, int accumulate)       \
    {                                                                                       \
        (void)rows, (void)H, (void)u0, (void)u1, (void)gates, (void)gh, (void)h_prev;       \
        (void)dh, (void)dh_prev, (void)accumulate;                                          \
    }                                                                                       \
    void clstm_sigmoid_##ISA##_##SUF(long n, const REAL *x, REAL *y)                       \
    {                                                                                       \
        (void)n, (void)x, (void)y;                                                          \
    }                                                                                       \
    void clstm_tanh_##ISA##_##SUF(long n, const REAL *x, REAL *y)                          \
    {                                                                                       \
        (void)n, (void)x, (void)y;                                                          \
    }

#endif
