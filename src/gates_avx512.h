/* The gate loops and sigmoid/tanh in AVX-512 intrinsics (gates_avx512.c),
 * chosen at run time by gates.c when the CPU has AVX-512F. Same contract as the
 * functions of the same name without _avx512 in gates.h. */
#ifndef CLSTM_GATES_AVX512_H
#define CLSTM_GATES_AVX512_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(CLSTM_NO_CLONES)
#define CLSTM_GATES_AVX512 1
#else
#define CLSTM_GATES_AVX512 0
#endif

/* Whether this build has the AVX-512 code and the CPU (and OS) can run it. */
int clstm_gates_avx512_supported(void);

void clstm_gates_forward_units_avx512_f32(int rows, int H, int u0, int u1, float *gates,
                                          const float *bias, const float *peephole,
                                          const float *c_prev, float *c, float *h);
void clstm_gates_forward_units_avx512_f64(int rows, int H, int u0, int u1, double *gates,
                                          const double *bias, const double *peephole,
                                          const double *c_prev, double *c, double *h);
void clstm_gates_backward_units_avx512_f32(int rows, int H, int u0, int u1, float *gates,
                                           const float *peephole, const float *c_prev,
                                           const float *c, const float *dh, float *dc);
void clstm_gates_backward_units_avx512_f64(int rows, int H, int u0, int u1, double *gates,
                                           const double *peephole, const double *c_prev,
                                           const double *c, const double *dh, double *dc);
void clstm_sigmoid_avx512_f32(long n, const float *x, float *y);
void clstm_sigmoid_avx512_f64(long n, const double *x, double *y);
void clstm_tanh_avx512_f32(long n, const float *x, float *y);
void clstm_tanh_avx512_f64(long n, const double *x, double *y);

#endif
