/* The LSTM's element-wise work, fused: one pass over the gates of a block of rows.
 *
 * Layout: a block of `rows` batch rows, stored contiguously. `gates` is (rows, 4H) with
 * the blocks i, f, g, o (PyTorch's order); `c_prev`, `c`, `h`, `dh`, `dc` are (rows, H).
 * `peephole` is (3, H) = w_ci, w_cf, w_co, or NULL. `c_prev` NULL means a zero cell state.
 *
 * Forward:  gates holds a_t = x W_ihᵀ + h W_hhᵀ (bias not yet added); on return it holds the
 *           activated gates i, f, g, o, which is what backward needs.
 * Backward: gates holds the activated gates; on return it holds da = dL/da_t. dh is dL/dh_t
 *           (read only); dc is dL/dc_t on entry and dL/dc_{t-1} on return.
 * The math is written once, in DEVELOPERS.md.
 */
#ifndef CLSTM_GATES_H
#define CLSTM_GATES_H

#ifdef __cplusplus
extern "C" {
#endif

void clstm_gates_forward_f32(int rows, int H, float *gates, const float *bias,
                             const float *peephole, const float *c_prev,
                             float *c, float *h);
void clstm_gates_forward_f64(int rows, int H, double *gates, const double *bias,
                             const double *peephole, const double *c_prev,
                             double *c, double *h);

/* The same for hidden units u0 <= j < u1 only (of every row and gate): the gates, c and h
 * of the other units are neither read nor written, so threads that own disjoint unit
 * ranges can run it on one step side by side. */
void clstm_gates_forward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                   const float *bias, const float *peephole,
                                   const float *c_prev, float *c, float *h);
void clstm_gates_forward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                   const double *bias, const double *peephole,
                                   const double *c_prev, double *c, double *h);

void clstm_gates_backward_f32(int rows, int H, float *gates, const float *peephole,
                              const float *c_prev, const float *c,
                              const float *dh, float *dc);
void clstm_gates_backward_f64(int rows, int H, double *gates, const double *peephole,
                              const double *c_prev, const double *c,
                              const double *dh, double *dc);

/* The same for hidden units u0 <= j < u1 only (as clstm_gates_forward_units). */
void clstm_gates_backward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                    const float *peephole, const float *c_prev,
                                    const float *c, const float *dh, float *dc);
void clstm_gates_backward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                    const double *peephole, const double *c_prev,
                                    const double *c, const double *dh, double *dc);

/* The GRU's element-wise work (torch.nn.GRU: gates r, z, n, "linear before reset"), fused
 * the same way. `gates` and `gh` are (rows, 3H) with the blocks r, z, n; `h_prev`, `h`,
 * `dh`, `dh_prev` are (rows, H). `b_ih`, `b_hh` are (3H,) or both NULL (no bias);
 * `h_prev` NULL means a zero state.
 *
 * Forward:  gates holds x W_ihᵀ, gh holds h_prev W_hhᵀ (neither with its bias). On return
 *           gates holds r, z, n and gh's n block holds W_hn h_prev + b_hn (what r
 *           multiplied: backward needs it); h = (1 - z) ⊙ n + z ⊙ h_prev.
 * Backward: gates and gh as forward left them, dh = dL/dh (read only). On return gates
 *           holds dL/d(W_i x + b_i) = (da_r, da_z, da_n) and gh holds dL/d(W_h h + b_h)
 *           = (da_r, da_z, da_n ⊙ r); dh_prev receives the direct part dh ⊙ z of
 *           dL/dh_prev (added into it when `accumulate`, else written): the caller adds
 *           gh · W_hh. */
void clstm_gru_gates_forward_f32(int rows, int H, float *gates, float *gh, const float *b_ih,
                                 const float *b_hh, const float *h_prev, float *h);
void clstm_gru_gates_forward_f64(int rows, int H, double *gates, double *gh,
                                 const double *b_ih, const double *b_hh,
                                 const double *h_prev, double *h);
void clstm_gru_gates_backward_f32(int rows, int H, float *gates, float *gh,
                                  const float *h_prev, const float *dh, float *dh_prev,
                                  int accumulate);
void clstm_gru_gates_backward_f64(int rows, int H, double *gates, double *gh,
                                  const double *h_prev, const double *dh, double *dh_prev,
                                  int accumulate);

/* The same for hidden units u0 <= j < u1 only (of every row and gate), as
 * clstm_gates_forward_units: threads owning disjoint unit ranges run them side by side. */
void clstm_gru_gates_forward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                       float *gh, const float *b_ih, const float *b_hh,
                                       const float *h_prev, float *h);
void clstm_gru_gates_forward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                       double *gh, const double *b_ih, const double *b_hh,
                                       const double *h_prev, double *h);
void clstm_gru_gates_backward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                        float *gh, const float *h_prev, const float *dh,
                                        float *dh_prev, int accumulate);
void clstm_gru_gates_backward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                        double *gh, const double *h_prev, const double *dh,
                                        double *dh_prev, int accumulate);

/* db[j] += sum over rows of da[r, j], for a (rows, n) block with row stride ld. */
void clstm_column_sums_f32(long rows, int n, const float *da, int ld, float *db);
void clstm_column_sums_f64(long rows, int n, const double *da, int ld, double *db);

/* The peephole weights' gradients over a whole sequence of `steps` (T) steps of `rows` (B):
 * dpeep[0] += Σ da_i ⊙ c_{t-1}, dpeep[1] += Σ da_f ⊙ c_{t-1}, dpeep[2] += Σ da_o ⊙ c_t.
 * `da` is (T, B, 4H), `cells` (T, B, H), `c0` (B, H) or NULL. */
void clstm_peephole_grads_f32(int T, int B, int H, const float *da, const float *cells,
                              const float *c0, float *dpeep);
void clstm_peephole_grads_f64(int T, int B, int H, const double *da, const double *cells,
                              const double *c0, double *dpeep);

/* Which code runs the gate loops, sigmoid and tanh: the plain C loops (CLSTM_GATES_C, the
 * generic level), AVX2+FMA intrinsics or AVX-512 intrinsics. By default the best the CPU
 * (and the build) runs. clstm_gates_set_level returns the previous level, or -1 (nothing
 * changed) when the CPU or the build lacks `level`; a negative level goes back to the
 * default. */
enum { CLSTM_GATES_C = 0, CLSTM_GATES_AVX2 = 1, CLSTM_GATES_AVX512 = 2 };
int clstm_gates_set_level(int level);
int clstm_gates_level(void);
int clstm_gates_level_supported(int level);

/* Vectorisable exp, sigmoid and tanh (exposed for the accuracy tests). */
void clstm_sigmoid_f32(long n, const float *x, float *y);
void clstm_sigmoid_f64(long n, const double *x, double *y);
void clstm_tanh_f32(long n, const float *x, float *y);
void clstm_tanh_f64(long n, const double *x, double *y);

/* OpenMP's thread count, or 1 when built without OpenMP. */
int clstm_omp_max_threads(void);
int clstm_have_openmp(void);
/* Inside a parallel region: this thread's number and the team's size (0 and 1 without
 * OpenMP), and a barrier of the team (orphaned: it binds to the innermost enclosing
 * parallel region, so it can be called from the kernels' per-thread functions). */
int clstm_omp_thread_num(void);
int clstm_omp_num_threads(void);
void clstm_omp_barrier(void);
/* 1 when OMP_WAIT_POLICY is "passive" (idle threads sleep instead of spinning). */
int clstm_omp_passive_wait(void);

#ifdef __cplusplus
}
#endif
#endif
