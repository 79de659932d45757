# The public C-level API of clstm: one LSTM or GRU layer over raw, C-contiguous buffers.
#
#     from clstm.kernels cimport lstm_forward_f64, lstm_workspace_size
#
# Every function here is `noexcept nogil`, so it can run inside another extension's own
# nogil loop or prange. Layouts are row-major and time-major, in PyTorch's conventions:
#
#     x          (T, B, I)    input sequence
#     w_ih       (4H, I)      weight_ih_l{k}, gate blocks i, f, g, o
#     w_hh       (4H, H)      weight_hh_l{k}
#     bias       (4H,)        bias_ih_l{k} + bias_hh_l{k} (summed by the caller)
#     peephole   (3, H)       w_ci, w_cf, w_co, or NULL for a plain LSTM
#     h0, c0     (B, H)       initial state, or NULL for zeros
#     y          (T, B, H)    hidden states h_1 .. h_T; the final state h_n is y[T-1]
#     workspace  lstm_workspace_size(T, B, H) elements: the activated gates (T, B, 4H)
#                followed by the cell states (T, B, H); the final cell state c_n is
#                workspace[4·T·B·H + (T-1)·B·H :], i.e. the last (B, H) block.
#
# Return value: 0 on success, -1 when a size is not positive or too large (for BLAS's
# int, or for a buffer of more than 2**50 elements), -2 when the kernel could not
# allocate its packed copies of the weights.
# num_threads: OpenMP threads across the batch (each thread owns a slice of the rows for
# all T steps); pass 1 when calling from your own parallel region. In a process forked
# after it ran a team of several threads, the kernels run on one (GNU OpenMP cannot
# restart its pool in a forked child). The calls are safe from several threads at once
# when each has its own workspace and outputs.

# The workspace's size in elements, or -1 for sizes that are not positive or too large.
cdef Py_ssize_t lstm_workspace_size(int T, int B, int H) noexcept nogil

cdef int lstm_forward_f32(int T, int B, int I, int H, const float* x, const float* w_ih,
                          const float* w_hh, const float* bias, const float* peephole,
                          const float* h0, const float* c0, float* y, float* workspace,
                          int num_threads) noexcept nogil
cdef int lstm_forward_f64(int T, int B, int I, int H, const double* x, const double* w_ih,
                          const double* w_hh, const double* bias, const double* peephole,
                          const double* h0, const double* c0, double* y, double* workspace,
                          int num_threads) noexcept nogil

# Backward through the whole sequence, after lstm_forward with the same arguments.
#     workspace  in: as forward left it; destroyed (it ends holding dL/d(pre-activations))
#     dy         (T, B, H) in: dL/dy; destroyed (used as the running dL/dh)
#     dh_n, dc_n (B, H) gradient flowing into the final state, or NULL for zeros
#     dx         (T, B, I) out: dL/dx (overwritten), or NULL to skip that GEMM
#     dh0, dc0   (B, H) out: dL/dh0, dL/dc0 (overwritten)
#     dw_ih, dw_hh, dbias, dpeephole: ADDED INTO (+=), so gradients accumulate;
#                dbias (4H,) receives the gradient of bias_ih (= that of bias_hh);
#                dpeephole may be NULL when peephole is NULL.
cdef int lstm_backward_f32(int T, int B, int I, int H, const float* x, const float* w_ih,
                           const float* w_hh, const float* peephole, const float* h0,
                           const float* c0, const float* y, float* workspace, float* dy,
                           const float* dh_n, const float* dc_n, float* dx, float* dh0,
                           float* dc0, float* dw_ih, float* dw_hh, float* dbias,
                           float* dpeephole, int num_threads) noexcept nogil
cdef int lstm_backward_f64(int T, int B, int I, int H, const double* x, const double* w_ih,
                           const double* w_hh, const double* peephole, const double* h0,
                           const double* c0, const double* y, double* workspace, double* dy,
                           const double* dh_n, const double* dc_n, double* dx, double* dh0,
                           double* dc0, double* dw_ih, double* dw_hh, double* dbias,
                           double* dpeephole, int num_threads) noexcept nogil

# Variable lengths, directions and projections: one direction of a layer over a batch in
# PyTorch's packed layout (torch.nn.utils.rnn.pack_padded_sequence). The B rows are
# ordered by non-increasing length; batch_sizes (T ints, batch_sizes[0] == B,
# non-increasing, >= 1, T the longest length) says how many rows run at step t, and step
# t occupies rows off[t] .. off[t] + batch_sizes[t] of x (N, I), y (N, P'), dy, dx, with
# N = sum(batch_sizes) and off[t] the sum of the earlier batch sizes. Padded positions
# are neither stored nor computed. reverse != 0 runs each row from its own last step
# down to step 0 (the reverse direction of a bidirectional layer).
#     P          0: no projection, the state is H wide (P' = H), w_hr NULL;
#                1 <= P < H: LSTMP, y_t = (o ⊙ tanh(c_t))·W_hrᵀ, the state P' = P wide
#     w_hh       (4H, P'); w_hr (P, H) weight_hr_l{k}, or NULL
#     h0, c0     (B, P') and (B, H): the rows' initial states (or NULL for zeros)
#     h_n, c_n   (B, P') and (B, H) out: each row's state after its last step (forward)
#                or after step 0 (reverse); NULL to skip
#     bias       required (zeros for a bias-free layer)
#     workspace  lstm_packed_workspace_size(...) elements: 5·N·H, 6·N·H with P > 0
# Return values and num_threads as above; -1 also for invalid batch_sizes or P.
cdef Py_ssize_t lstm_packed_workspace_size(int T, int B, int H, int P,
                                           const int* batch_sizes) noexcept nogil

cdef int lstm_forward_packed_f32(int T, int B, int I, int H, int P, const int* batch_sizes,
                                 int reverse, const float* x, const float* w_ih,
                                 const float* w_hh, const float* w_hr, const float* bias,
                                 const float* peephole, const float* h0, const float* c0,
                                 float* y, float* h_n, float* c_n, float* workspace,
                                 int num_threads) noexcept nogil
cdef int lstm_forward_packed_f64(int T, int B, int I, int H, int P, const int* batch_sizes,
                                 int reverse, const double* x, const double* w_ih,
                                 const double* w_hh, const double* w_hr, const double* bias,
                                 const double* peephole, const double* h0, const double* c0,
                                 double* y, double* h_n, double* c_n, double* workspace,
                                 int num_threads) noexcept nogil

# Backward after lstm_forward_packed with the same arguments; as lstm_backward, with dy
# (N, P') and dx (N, I) packed, dh0 (B, P'). dh_n, dc_n join each row at its final step
# (as h_n, c_n were taken); dL/dh0, dL/dc0 are where each row read h0, c0. dw_hr (P, H)
# is added into with a projection (NULL without).
cdef int lstm_backward_packed_f32(int T, int B, int I, int H, int P, const int* batch_sizes,
                                  int reverse, const float* x, const float* w_ih,
                                  const float* w_hh, const float* w_hr, const float* peephole,
                                  const float* h0, const float* c0, const float* y,
                                  float* workspace, float* dy, const float* dh_n,
                                  const float* dc_n, float* dx, float* dh0, float* dc0,
                                  float* dw_ih, float* dw_hh, float* dw_hr, float* dbias,
                                  float* dpeephole, int num_threads) noexcept nogil
cdef int lstm_backward_packed_f64(int T, int B, int I, int H, int P, const int* batch_sizes,
                                  int reverse, const double* x, const double* w_ih,
                                  const double* w_hh, const double* w_hr,
                                  const double* peephole, const double* h0, const double* c0,
                                  const double* y, double* workspace, double* dy,
                                  const double* dh_n, const double* dc_n, double* dx,
                                  double* dh0, double* dc0, double* dw_ih, double* dw_hh,
                                  double* dw_hr, double* dbias, double* dpeephole,
                                  int num_threads) noexcept nogil

# The GRU (torch.nn.GRU: gates r, z, n in PyTorch's order; n = tanh(W_in x + b_in +
# r ⊙ (W_hn h + b_hn))): one direction of a layer over a batch in the packed layout
# above, any lengths (every row running all T steps is batch_sizes = [B] * T).
#     x          (N, I); y (N, H) the outputs, packed
#     w_ih       (3H, I) weight_ih_l{k}; w_hh (3H, H) weight_hh_l{k}
#     b_ih, b_hh (3H,) bias_ih_l{k} and bias_hh_l{k} (not summable: r multiplies b_hn),
#                or both NULL for a bias-free layer
#     h0         (B, H) the rows' initial states, or NULL for zeros
#     h_n        (B, H) out: each row's state after its last step (forward) or after
#                step 0 (reverse); NULL to skip
#     workspace  gru_packed_workspace_size(...) elements, 6·N·H: the gates r, z, n
#                (N, 3H) and the recurrent products W_hh h + b_hh (N, 3H) that backward
#                needs (r multiplied their n block)
# Return values and num_threads as for the LSTM's; -1 also for invalid batch_sizes or
# one bias without the other.
cdef Py_ssize_t gru_packed_workspace_size(int T, int B, int H,
                                          const int* batch_sizes) noexcept nogil

cdef int gru_forward_packed_f32(int T, int B, int I, int H, const int* batch_sizes,
                                int reverse, const float* x, const float* w_ih,
                                const float* w_hh, const float* b_ih, const float* b_hh,
                                const float* h0, float* y, float* h_n, float* workspace,
                                int num_threads) noexcept nogil
cdef int gru_forward_packed_f64(int T, int B, int I, int H, const int* batch_sizes,
                                int reverse, const double* x, const double* w_ih,
                                const double* w_hh, const double* b_ih, const double* b_hh,
                                const double* h0, double* y, double* h_n, double* workspace,
                                int num_threads) noexcept nogil

# Backward after gru_forward_packed with the same arguments.
#     workspace  in: as forward left it; destroyed
#     dy         (N, H) in: dL/dy; destroyed (used as the running dL/dh)
#     dh_n       (B, H) gradient flowing into each row's final state, or NULL for zeros
#     dx         (N, I) out: dL/dx (overwritten), or NULL to skip that GEMM
#     dh0        (B, H) out: dL/dh0 (overwritten)
#     dw_ih, dw_hh, db_ih, db_hh: ADDED INTO (+=); db_ih and db_hh both NULL without bias
cdef int gru_backward_packed_f32(int T, int B, int I, int H, const int* batch_sizes,
                                 int reverse, const float* x, const float* w_ih,
                                 const float* w_hh, const float* h0, const float* y,
                                 float* workspace, float* dy, const float* dh_n, float* dx,
                                 float* dh0, float* dw_ih, float* dw_hh, float* db_ih,
                                 float* db_hh, int num_threads) noexcept nogil
cdef int gru_backward_packed_f64(int T, int B, int I, int H, const int* batch_sizes,
                                 int reverse, const double* x, const double* w_ih,
                                 const double* w_hh, const double* h0, const double* y,
                                 double* workspace, double* dy, const double* dh_n,
                                 double* dx, double* dh0, double* dw_ih, double* dw_hh,
                                 double* db_ih, double* db_hh, int num_threads) noexcept nogil
