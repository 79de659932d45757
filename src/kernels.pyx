# cython: language_level=3
"""One LSTM or GRU layer, forward and backward over a whole sequence, compiled.

The work per layer (T steps, B rows, I inputs, H hidden units):

* forward:  one GEMM for the input projection of all T·B rows, then per step one
  recurrent GEMM (B×H)·(H×4H) added into the gates and one fused element-wise pass
  (src/gates.c) for the nonlinearities, the cell and the hidden state;
* backward: per step one fused pass for the gate gradients and one GEMM (B×4H)·(4H×H)
  for the hidden-state gradient; then the weight gradients as a few large GEMMs over all
  T·B rows and the bias gradient as column sums.

Rows of the batch never interact, so with OpenMP each thread takes one contiguous slice
of rows through all T steps: no barrier per step. (A batch with too few rows for the
threads splits the hidden units instead, with a barrier per step: forward_units,
backward_units.) The large GEMMs outside that loop (the input projection, the weight and
input gradients) are cut into blocks of rows or columns over the same threads. There is one thread pool: SciPy's BLAS is switched to one thread
for the duration of a call (through the setter registered by clstm._threads), because
BLAS's own threads next to the OpenMP team oversubscribe the cores.

The GRU (gru_layer_forward_packed and below) runs on the LSTM's packed driver with its
own cell: 3H gate columns, its recurrent product kept apart from the input part
(DEVELOPERS.md, "The GRU").

Matrices are row-major; BLAS is column-major. ``gemm`` below swaps the operands:
row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport uintptr_t
from libc.limits cimport INT_MAX
from cpython.ref cimport PyObject
from cpython.exc cimport PyErr_Restore

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv
cimport numpy as cnp

cnp.import_array()

cdef extern from "gates.h" nogil:
    void clstm_gates_forward_f32(int rows, int H, float *gates, const float *bias,
                                 const float *peephole, const float *c_prev,
                                 float *c, float *h)
    void clstm_gates_forward_f64(int rows, int H, double *gates, const double *bias,
                                 const double *peephole, const double *c_prev,
                                 double *c, double *h)
    void clstm_gates_forward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                       const float *bias, const float *peephole,
                                       const float *c_prev, float *c, float *h)
    void clstm_gates_forward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                       const double *bias, const double *peephole,
                                       const double *c_prev, double *c, double *h)
    void clstm_gates_backward_f32(int rows, int H, float *gates, const float *peephole,
                                  const float *c_prev, const float *c,
                                  const float *dh, float *dc)
    void clstm_gates_backward_f64(int rows, int H, double *gates, const double *peephole,
                                  const double *c_prev, const double *c,
                                  const double *dh, double *dc)
    void clstm_gates_backward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                        const float *peephole, const float *c_prev,
                                        const float *c, const float *dh, float *dc)
    void clstm_gates_backward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                        const double *peephole, const double *c_prev,
                                        const double *c, const double *dh, double *dc)
    void clstm_gru_gates_forward_f32(int rows, int H, float *gates, float *gh,
                                     const float *b_ih, const float *b_hh,
                                     const float *h_prev, float *h)
    void clstm_gru_gates_forward_f64(int rows, int H, double *gates, double *gh,
                                     const double *b_ih, const double *b_hh,
                                     const double *h_prev, double *h)
    void clstm_gru_gates_backward_f32(int rows, int H, float *gates, float *gh,
                                      const float *h_prev, const float *dh, float *dh_prev,
                                      int accumulate)
    void clstm_gru_gates_backward_f64(int rows, int H, double *gates, double *gh,
                                      const double *h_prev, const double *dh,
                                      double *dh_prev, int accumulate)
    void clstm_gru_gates_forward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                           float *gh, const float *b_ih, const float *b_hh,
                                           const float *h_prev, float *h)
    void clstm_gru_gates_forward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                           double *gh, const double *b_ih,
                                           const double *b_hh, const double *h_prev,
                                           double *h)
    void clstm_gru_gates_backward_units_f32(int rows, int H, int u0, int u1, float *gates,
                                            float *gh, const float *h_prev, const float *dh,
                                            float *dh_prev, int accumulate)
    void clstm_gru_gates_backward_units_f64(int rows, int H, int u0, int u1, double *gates,
                                            double *gh, const double *h_prev,
                                            const double *dh, double *dh_prev,
                                            int accumulate)
    void clstm_column_sums_f32(long rows, int n, const float *da, int ld, float *db)
    void clstm_column_sums_f64(long rows, int n, const double *da, int ld, double *db)
    void clstm_peephole_grads_f32(int T, int B, int H, const float *da, const float *cells,
                                  const float *c0, float *dpeep)
    void clstm_peephole_grads_f64(int T, int B, int H, const double *da, const double *cells,
                                  const double *c0, double *dpeep)
    void clstm_sigmoid_f32(long n, const float *x, float *y)
    void clstm_sigmoid_f64(long n, const double *x, double *y)
    void clstm_tanh_f32(long n, const float *x, float *y)
    void clstm_tanh_f64(long n, const double *x, double *y)
    int clstm_omp_max_threads()
    int clstm_have_openmp()
    int clstm_gates_set_level(int level)
    int clstm_gates_level()
    int clstm_gates_level_supported(int level)
    int clstm_omp_thread_num()
    int clstm_omp_num_threads()
    void clstm_omp_barrier()
    int clstm_omp_passive_wait()

cdef extern from "runtime.h" nogil:
    ctypedef struct clstm_call:
        int stop_step
        PyObject* exc_type
        PyObject* exc_value
        PyObject* exc_tb
    void clstm_blas_register(void* set_threads, void* get_threads)
    void clstm_blas_enter()
    void clstm_blas_leave()
    int clstm_team_threads(int requested)
    ctypedef struct clstm_team_clock:
        double start
        int late
    void clstm_team_clock_start(clstm_team_clock* clock)
    double clstm_thread_cpu()
    void clstm_team_clock_check(clstm_team_clock* clock, double cpu_at_start)
    int clstm_overlap_allowed()
    void clstm_overlap_report(double elapsed, double lost)
    int clstm_overlap_calls_skipped()
    int clstm_overlap_set_strikes(int calls)
    void clstm_team_report(int late)
    double clstm_team_set_max_lost_share(double share)
    int clstm_team_calls_on_one_thread()
    void clstm_team_reset()
    void clstm_team_pause_get(int* calls_left, int* pause)
    void clstm_team_pause_set(int calls_left, int pause)
    int clstm_fork_limited()
    void clstm_call_init(clstm_call* call, int check_signals)
    int clstm_call_stop_at(clstm_call* call, int t)
    int clstm_call_stopped(clstm_call* call)
    double clstm_monotonic()
    ctypedef struct clstm_row_block:
        int claimed
        int done
    int clstm_block_take(clstm_row_block* b, int s)
    void clstm_block_done(clstm_row_block* b, int s)
    int clstm_block_take_over(clstm_row_block* b, int steps)
    void clstm_wait_a_little(int* spins)
    void clstm_sleep(double seconds)
    void clstm_count_taken_over(int steps)
    long clstm_taken_over_steps()
    ctypedef struct clstm_counter:
        int value
    int clstm_counter_get(clstm_counter* c)
    void clstm_counter_set(clstm_counter* c, int value)
    int clstm_counter_claim(clstm_counter* c, int expected)
    void clstm_count_caller_chunks(int chunks)
    void clstm_beside_begin(clstm_counter* mine, clstm_counter* other)
    void clstm_beside_here()
    void clstm_beside_end()
    void clstm_wait_beside(int* spins)
    long clstm_caller_chunks()
    int clstm_all_finite_f32(Py_ssize_t n, const float* a)
    int clstm_all_finite_f64(Py_ssize_t n, const double* a)

cdef extern from "packed_gemm.h" nogil:
    int CLSTM_PACKED_NR_F32
    int CLSTM_PACKED_NR_F64
    size_t clstm_packed_size_f32(int K, int N)
    size_t clstm_packed_size_f64(int K, int N)
    void clstm_pack_f32(int K, int N, const float *src, int ld, int src_is_nk, float *packed)
    void clstm_pack_f64(int K, int N, const double *src, int ld, int src_is_nk, double *packed)
    void clstm_packed_gemm_f32(int M, int K, int N, const float *A, int lda,
                               const float *packed, float *C, int ldc, int accumulate)
    void clstm_packed_gemm_f64(int M, int K, int N, const double *A, int lda,
                               const double *packed, double *C, int ldc, int accumulate)
    void clstm_packed_gemm_at_f32(int M, int K, int N, const float *A, int lda,
                                  const float *packed, float *C, int ldc, int accumulate)
    void clstm_packed_gemm_at_f64(int M, int K, int N, const double *A, int lda,
                                  const double *packed, double *C, int ldc, int accumulate)
    void clstm_pack_cat_f32(int K1, int K2, int N, const float *src1, int ld1,
                            const float *src2, int ld2, int src_is_nk, float *packed)
    void clstm_pack_cat_f64(int K1, int K2, int N, const double *src1, int ld1,
                            const double *src2, int ld2, int src_is_nk, double *packed)
    void clstm_packed_gemm2_f32(int M, int K1, int K2, int N, const float *A1, int lda1,
                                const float *A2, int lda2, const float *packed, float *C,
                                int ldc, int accumulate)
    void clstm_packed_gemm2_f64(int M, int K1, int K2, int N, const double *A1, int lda1,
                                const double *A2, int lda2, const double *packed,
                                double *C, int ldc, int accumulate)
    const char *clstm_packed_gemm_isa_name()
    int clstm_packed_gemm_select(int isa)
    int clstm_packed_gemm_set_prefetch_c(int enabled)


# ---------------------------------------------------------------------------------------
# BLAS thread control. Registered once from Python (clstm._threads finds SciPy's BLAS);
# nothing is steered when the BLAS is not one we know how to steer. The guard is
# reference counted in src/runtime.c, so calls from several threads at once are safe.

def _register_blas_thread_control(uintptr_t setter, uintptr_t getter):
    """Install the addresses of the BLAS's ``set_num_threads``/``get_num_threads``."""
    clstm_blas_register(<void*>setter, <void*>getter)


def fork_limited():
    """Whether this process is a child forked after its parent ran a multi-threaded
    kernel: GNU OpenMP cannot restart its thread pool there, so every kernel runs on
    one thread (see src/runtime.c)."""
    return bool(clstm_fork_limited())


def openmp_enabled():
    """Whether the kernels were compiled with OpenMP."""
    return bool(clstm_have_openmp())


def openmp_max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS)."""
    return clstm_omp_max_threads()


# ---------------------------------------------------------------------------------------
# Typed building blocks: one body for float32 and float64.

cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m×n, row-major) := alpha·op(A)·op(B) + beta·C"""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void gemv_rows(int n, int k, floating alpha, const floating* a, int lda,
                           const floating* x, floating beta, floating* y) noexcept nogil:
    """y (n) := alpha·A·x + beta·y for a row-major A (n×k); the one-row case of
    ``gemm(False, True, 1, n, k, ...)``, without GEMM's packing."""
    cdef char trans = b'T'
    cdef int one = 1
    if floating is float:
        sgemv(&trans, &k, &n, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&trans, &k, &n, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)


cdef inline void gates_forward(int rows, int H, floating* gates, const floating* bias,
                               const floating* peephole, const floating* c_prev,
                               floating* c, floating* h) noexcept nogil:
    if floating is float:
        clstm_gates_forward_f32(rows, H, gates, bias, peephole, c_prev, c, h)
    else:
        clstm_gates_forward_f64(rows, H, gates, bias, peephole, c_prev, c, h)


cdef inline void gates_forward_units(int rows, int H, int u0, int u1, floating* gates,
                                     const floating* bias, const floating* peephole,
                                     const floating* c_prev, floating* c,
                                     floating* h) noexcept nogil:
    if floating is float:
        clstm_gates_forward_units_f32(rows, H, u0, u1, gates, bias, peephole, c_prev, c, h)
    else:
        clstm_gates_forward_units_f64(rows, H, u0, u1, gates, bias, peephole, c_prev, c, h)


cdef inline void gates_backward(int rows, int H, floating* gates, const floating* peephole,
                                const floating* c_prev, const floating* c,
                                const floating* dh, floating* dc) noexcept nogil:
    if floating is float:
        clstm_gates_backward_f32(rows, H, gates, peephole, c_prev, c, dh, dc)
    else:
        clstm_gates_backward_f64(rows, H, gates, peephole, c_prev, c, dh, dc)


cdef inline void gates_backward_units(int rows, int H, int u0, int u1, floating* gates,
                                      const floating* peephole, const floating* c_prev,
                                      const floating* c, const floating* dh,
                                      floating* dc) noexcept nogil:
    if floating is float:
        clstm_gates_backward_units_f32(rows, H, u0, u1, gates, peephole, c_prev, c, dh, dc)
    else:
        clstm_gates_backward_units_f64(rows, H, u0, u1, gates, peephole, c_prev, c, dh, dc)


# The recurrent GEMMs use the same W_hh at every step. Packed once per call into the
# panel layout of src/packed_gemm.h, it is read straight by a register-blocked kernel at
# each step, where a BLAS call would re-pack it T times (and is tuned for large M).
# Switchable for A/B measurements (bench/): 0 calls BLAS at every step instead.
cdef bint _use_packed_gemm = True
# Which products run on the packed kernels, set per ISA level by _set_isa (the rule and
# its measurements: DEVELOPERS.md, "ISA levels"):
# - the per-step products (recurrent GEMM, per-step input projection, the units split),
#   when each thread has at most _packed_step_max_rows rows;
# - the whole-sequence products over all T·B rows (upfront input projection, dX, the
#   weight gradients) when _packed_bulk, else SciPy's BLAS.
cdef int _packed_step_max_rows = INT_MAX
cdef bint _packed_bulk = True


def _set_packed_gemm(bint enabled):
    """Use the packed GEMM kernels where the ISA level's rule says so (True) or BLAS for
    every product (False); returns the previous setting."""
    global _use_packed_gemm
    old = _use_packed_gemm
    _use_packed_gemm = enabled
    return old


def _set_packed_step_max_rows(int rows):
    """The per-step products run on the packed kernels up to this many rows per thread
    (BLAS above); returns the previous value. Set by _set_isa."""
    global _packed_step_max_rows
    old = _packed_step_max_rows
    _packed_step_max_rows = rows
    return old


def _set_prefetch_c(bint enabled):
    """Whether the packed GEMM fetches each panel's C block into L2 a panel ahead (True,
    the default); returns the previous setting. For A/B measurements."""
    return bool(clstm_packed_gemm_set_prefetch_c(enabled))


def _set_packed_bulk(bint enabled):
    """The whole-sequence products on the packed kernels (True) or BLAS (False); returns
    the previous setting. Set by _set_isa."""
    global _packed_bulk
    old = _packed_bulk
    _packed_bulk = enabled
    return old


cdef inline bint packed_steps(int rows_per_thread) noexcept nogil:
    return _use_packed_gemm and rows_per_thread <= _packed_step_max_rows


cdef inline bint packed_bulk() noexcept nogil:
    return _use_packed_gemm and _packed_bulk


# ---------------------------------------------------------------------------------------
# Instruction-set levels. Every kernel path follows one level: the gate loops (C,
# AVX2+FMA or AVX-512 intrinsics), the packed GEMM kernel and the packed-vs-BLAS rule.
# The level is the best the CPU runs, or CLSTM_ISA from the environment (read at import).

ISA_LEVELS = ("generic", "avx2", "avx512")       # lowest first; index = the C enums' value
# Per level: (rows per thread up to which the per-step products are packed, whole-sequence
# products packed). Measured: DEVELOPERS.md, "ISA levels".
_PACKED_RULE = {"generic": (64, False), "avx2": (64, False), "avx512": (INT_MAX, True)}
cdef int _isa_level = -1


def supported_isas():
    """The ISA levels this CPU (and this build) can run, lowest first."""
    # (the gate loops and the packed GEMM test the same CPU flags and build conditions)
    return tuple(level for i, level in enumerate(ISA_LEVELS)
                 if clstm_gates_level_supported(i))


def isa():
    """The instruction-set level clstm's kernels run at: "avx512", "avx2" or "generic"."""
    return ISA_LEVELS[_isa_level]


def _set_isa(level):
    """Run every kernel path at ``level`` ("avx512", "avx2", "generic"; None: the best this
    CPU runs): the gate loops, the packed GEMM kernel and the packed-vs-BLAS rule. Returns
    the previous level. A level the CPU lacks is refused with ValueError."""
    global _isa_level, _packed_step_max_rows, _packed_bulk
    supported = supported_isas()
    if level is None:
        level = supported[len(supported) - 1]
    if level not in ISA_LEVELS:
        raise ValueError(f"unknown ISA level {level!r}: expected one of "
                         f"{', '.join(ISA_LEVELS)}")
    if level not in supported:
        raise ValueError(f"ISA level {level!r} is not supported by this CPU (or build): "
                         f"it runs {', '.join(supported)}")
    old = ISA_LEVELS[_isa_level] if _isa_level >= 0 else None
    cdef int i = ISA_LEVELS.index(level)
    if clstm_gates_set_level(i) < 0 or clstm_packed_gemm_select(i) != i:
        raise ValueError(f"ISA level {level!r} could not be selected")
    _packed_step_max_rows, _packed_bulk = _PACKED_RULE[level]
    _isa_level = i
    return old


def _isa_from_environment():
    """The level CLSTM_ISA asks for (None when unset or empty: the best the CPU runs)."""
    import os
    value = os.environ.get("CLSTM_ISA", "").strip().lower()
    if not value:
        return None
    if value not in ISA_LEVELS:
        raise ValueError(f"CLSTM_ISA={value!r}: expected one of {', '.join(ISA_LEVELS)}")
    if value not in supported_isas():
        raise ValueError(f"CLSTM_ISA={value!r}: this CPU (or build) runs only "
                         f"{', '.join(supported_isas())}")
    return value


_set_isa(_isa_from_environment())


_GATE_CODES = ("c", "avx2", "avx512")


def _set_gates_isa(code):
    """Run the gate loops, sigmoid and tanh with ``code``: "c" (the plain C loops),
    "avx2" or "avx512" (intrinsics), whatever the ISA level; returns the previous code.
    For tests and A/B measurements; _set_isa sets it with the level."""
    if code not in _GATE_CODES:
        raise ValueError(f"unknown gate code {code!r}: expected one of {_GATE_CODES}")
    old = clstm_gates_set_level(_GATE_CODES.index(code))
    if old < 0:
        raise ValueError(f"gate code {code!r}: this CPU (or build) lacks it")
    return _GATE_CODES[old]


def _set_gates_avx512(bint enabled):
    """The AVX-512 gate loops where the CPU has them (True) or the plain C ones (False);
    returns whether the AVX-512 code was in use."""
    old = clstm_gates_level()
    if enabled:
        if clstm_gates_level_supported(2):
            clstm_gates_set_level(2)
    else:
        clstm_gates_set_level(0)
    return old == 2


def gates_isa():
    """Which gate loop runs: "avx512" or "avx2" (intrinsics) or "c" (plain C)."""
    return _GATE_CODES[clstm_gates_level()]


def packed_gemm_isa():
    """The instruction set of the packed GEMM kernel in use."""
    return clstm_packed_gemm_isa_name().decode()


cdef inline void pack_into(int K1, int K2, int N, const floating* src1, int ld1,
                           const floating* src2, int ld2, bint src_is_nk,
                           floating* packed) noexcept nogil:
    if K2 == 0:
        if floating is float:
            clstm_pack_f32(K1, N, src1, ld1, src_is_nk, packed)
        else:
            clstm_pack_f64(K1, N, src1, ld1, src_is_nk, packed)
    elif floating is float:
        clstm_pack_cat_f32(K1, K2, N, src1, ld1, src2, ld2, src_is_nk, packed)
    else:
        clstm_pack_cat_f64(K1, K2, N, src1, ld1, src2, ld2, src_is_nk, packed)


cdef floating* pack_weights(int K, int N, const floating* src, int ld, bint src_is_nk,
                            int num_threads=1) noexcept nogil:
    """A packed copy of P (K × N) (src is Pᵀ when src_is_nk), or NULL when out of memory.
    Free with free()."""
    return pack_weights_cat(K, 0, N, src, ld, NULL, 1, src_is_nk, num_threads)


cdef floating* pack_weights_cat(int K1, int K2, int N, const floating* src1, int ld1,
                                const floating* src2, int ld2, bint src_is_nk,
                                int num_threads=1) noexcept nogil:
    """A packed copy of P = [P1; P2] ((K1 + K2) × N: the first K1 rows from src1, the
    next K2 from src2, each Pᵀ when src_is_nk), or NULL when out of memory. Free with
    free().

    With num_threads > 1 and at least _min_parallel_pass_bytes, the panels are cut into
    blocks over the threads (a block of whole panels from column n0 is itself a packed
    matrix, at n0·K in the full one). A pack of several MiB (W_ih, W_hh, X for the weight
    gradients) is otherwise a serial phase between parallel GEMMs, with the other threads
    idle: measured at S4, 2 threads, training, ~3% of the wall time."""
    cdef void* buf = NULL
    cdef size_t n
    cdef int K = K1 + K2
    cdef int nr = CLSTM_PACKED_NR_F32 if floating is float else CLSTM_PACKED_NR_F64
    cdef int panels = (N + nr - 1) // nr
    cdef int parts = num_threads, chunk, n0, n1
    if floating is float:
        n = clstm_packed_size_f32(K, N)
    else:
        n = clstm_packed_size_f64(K, N)
    if posix_memalign(&buf, 64, n * sizeof(floating)) != 0:
        return NULL
    cdef floating* packed = <floating*>buf
    if parts > panels:
        parts = panels
    if parts <= 1 or <double>K * N * sizeof(floating) < _min_parallel_pass_bytes:
        pack_into(K1, K2, N, src1, ld1, src2, ld2, src_is_nk, packed)
        return packed
    for chunk in prange(parts, num_threads=parts, schedule="static"):
        n0 = panels * chunk // parts * nr
        n1 = panels * (chunk + 1) // parts * nr
        if n1 > N:
            n1 = N
        if n1 > n0:
            pack_into(K1, K2, n1 - n0, src1 + (<Py_ssize_t>n0 * ld1 if src_is_nk else n0),
                      ld1, src2 + (<Py_ssize_t>n0 * ld2 if src_is_nk else n0)
                      if src2 != NULL else NULL, ld2, src_is_nk,
                      packed + <Py_ssize_t>n0 * K)
    return packed


cdef inline void weights_gemm(int m, int n, int k, const floating* a, int lda,
                                const floating* packed, const floating* w, bint w_is_nk,
                                floating beta, floating* c, int ldc) noexcept nogil:
    """C (m×n) := A (m×k)·P + beta·C, where P is W or Wᵀ (W row-major, w_is_nk: W is
    n×k), from the packed copy when there is one (else W must be given)."""
    if packed != NULL:
        if floating is float:
            clstm_packed_gemm_f32(m, k, n, a, lda, packed, c, ldc, beta != 0)
        else:
            clstm_packed_gemm_f64(m, k, n, a, lda, packed, c, ldc, beta != 0)
    elif w_is_nk:
        gemm(False, True, m, n, k, <floating>1, a, lda, w, k, beta, c, ldc)
    else:
        gemm(False, False, m, n, k, <floating>1, a, lda, w, n, beta, c, ldc)


# The largest buffer (in elements) a call may index: far beyond any memory, far below
# where a size computation in Py_ssize_t could overflow.
cdef double _max_buffer_elements = 2.0 ** 50


cdef inline bint sizes_ok(int T, int B, int I, int H) noexcept nogil:
    """Positive, every BLAS dimension (T·B rows, 4H, I) fits BLAS's int, and every
    buffer (the workspace of 5·T·B·H, x of T·B·I) can be indexed without overflow."""
    if T <= 0 or B <= 0 or I <= 0 or H <= 0:
        return False
    if <long long>T * B > INT_MAX or 4 * <long long>H > INT_MAX:
        return False
    return (5.0 * T * B * H <= _max_buffer_elements
            and <double>T * B * I <= _max_buffer_elements
            and 4.0 * H * (<double>H + I) <= _max_buffer_elements)


# Passes over memory (packing, column sums) smaller than this stay on one thread: waking
# the team costs more than it saves.
cdef double _min_parallel_pass_bytes = 256.0 * 1024


def _set_min_parallel_pass_bytes(double size):
    """Set the size from which packing and column sums are split over the threads (tests
    set 0); returns the previous value."""
    global _min_parallel_pass_bytes
    old = _min_parallel_pass_bytes
    _min_parallel_pass_bytes = size
    return old


# A thread takes a slice of the batch only if its share of the recurrent work is at least
# this many FLOPs (about 20-40 µs): below that, waking a sleeping thread and the risk of it
# being descheduled on a busy machine cost more than the split saves.
cdef double _min_flops_per_thread = 2.0e6
# How many threads the last forward or backward used (read by the tests, which must know
# that a "2 threads" run really split the batch).
cdef int _threads_used_last = 0


def _set_min_flops_per_thread(double flops):
    """Set the work threshold for a thread (tests set 0 to force splitting tiny
    batches); returns the previous value."""
    global _min_flops_per_thread
    old = _min_flops_per_thread
    _min_flops_per_thread = flops
    return old


# Rows per thread from which the forward computes the input projection step by step
# (see layer_forward); 0 always, a huge value never (for A/B measurements and tests).
cdef int _min_rows_per_step_projection = 4
cdef double _max_step_weights_bytes = 4.0 * 1024 * 1024
# With the per-step projection, one product per step over [x_t, h_{t-1}] against
# [W_ih; W_hh] packed together (clstm_packed_gemm2) rather than two products into the
# same gates: each C tile is loaded and stored once, and a call's setup is paid once.
# Measured: DEVELOPERS.md, "ISA levels".
cdef bint _fused_step_products = True


def _set_fused_step_products(bint enabled):
    """One product per step for the per-step projection (True) or two; returns the
    previous setting. For A/B measurements."""
    global _fused_step_products
    old = _fused_step_products
    _fused_step_products = enabled
    return old


def _set_max_step_weights_bytes(double size):
    """Set the size of W_ih and W_hh together up to which the forward may compute the
    input projection step by step; returns the previous value."""
    global _max_step_weights_bytes
    old = _max_step_weights_bytes
    _max_step_weights_bytes = size
    return old


def _set_min_rows_per_step_projection(int rows):
    """Set the per-step input projection threshold; returns the previous value."""
    global _min_rows_per_step_projection
    old = _min_rows_per_step_projection
    _min_rows_per_step_projection = rows
    return old


# Split the hidden units over the threads (a barrier per step) only if each step's
# recurrent product gives each thread at least this many FLOPs (see unit_split_threads).
cdef double _min_step_flops_per_unit_thread = 6.0e4


def _set_min_step_flops_per_unit_thread(double flops):
    """Set the per-step work threshold of the hidden-unit split (0: whenever the batch
    is smaller than the thread count; a huge value: never); returns the previous value."""
    global _min_step_flops_per_unit_thread
    old = _min_step_flops_per_unit_thread
    _min_step_flops_per_unit_thread = flops
    return old


# Whether the last forward split the hidden units (True) or the rows (read by the tests).
cdef bint _units_split_last = False


def _threads_used_by_last_call():
    return _threads_used_last


def _last_forward_split_units():
    return bool(_units_split_last)


cdef inline int thread_count(int num_threads, int T, int B, int H) noexcept nogil:
    """Threads for the batch split: at most one per row, and enough work for each."""
    global _threads_used_last
    cdef double recurrent_flops = 8.0 * T * B * H * H      # T GEMMs of 2·B·H·4H
    cdef double by_work = recurrent_flops / _min_flops_per_thread if _min_flops_per_thread > 0 else B
    cdef int n = num_threads
    if n > B:
        n = B
    if n > by_work:
        n = <int>by_work
    if n < 1:
        n = 1
    _threads_used_last = n
    return n


cdef inline int split_point(int m, int parts, int i) noexcept nogil:
    """Boundary i of ``parts`` near-equal blocks of m, on multiples of 16 so that each
    thread's block starts on BLAS's blocking (and on a cache line)."""
    if i >= parts:
        return m
    cdef long long p = (<long long>m * i // parts + 8) // 16 * 16
    return <int>p if p < m else m


cdef void parallel_gemm(int num_threads, bint trans_a, bint trans_b, int m, int n, int k,
                        floating alpha, const floating* a, int lda, const floating* b,
                        int ldb, floating beta, floating* c, int ldc) noexcept nogil:
    """gemm() on ``num_threads`` OpenMP threads: the output is cut into blocks of rows
    (or of columns, when it is wider than tall), each computed by one thread calling
    single-threaded BLAS. One thread pool for the whole kernel: BLAS's own threads,
    running beside the OpenMP team, oversubscribe the cores (measured: 40x slower
    on a busy 2-core machine)."""
    cdef int chunk, lo, hi
    cdef int parts = num_threads
    cdef double by_work = 2.0 * m * n * k / _min_flops_per_thread if _min_flops_per_thread > 0 else parts
    if parts > by_work:
        parts = <int>by_work
    if parts > (m if m >= n else n) // 16:
        parts = (m if m >= n else n) // 16
    if parts <= 1:
        gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    if m >= n:
        for chunk in prange(parts, num_threads=parts, schedule="static"):
            lo = split_point(m, parts, chunk)
            hi = split_point(m, parts, chunk + 1)
            if hi > lo:
                gemm(trans_a, trans_b, hi - lo, n, k, alpha,
                     a + (lo if trans_a else <Py_ssize_t>lo * lda), lda, b, ldb, beta,
                     c + <Py_ssize_t>lo * ldc, ldc)
    else:
        for chunk in prange(parts, num_threads=parts, schedule="static"):
            lo = split_point(n, parts, chunk)
            hi = split_point(n, parts, chunk + 1)
            if hi > lo:
                gemm(trans_a, trans_b, m, hi - lo, k, alpha, a, lda,
                     b + (<Py_ssize_t>lo * ldb if trans_b else lo), ldb, beta, c + lo, ldc)


cdef void packed_gemm_blocked(int m, int k, int n, const floating* a, int lda,
                              const floating* packed, floating* c, int ldc,
                              bint accumulate, clstm_call* call) noexcept nogil:
    """C (m×n) (+)= A (m×k)·P in blocks of 256 rows. The packed kernel walks panel by
    panel over all its rows, which for the T·B rows of the input projection would stream
    all of A from memory once per panel; with too few rows per block, each panel (from
    L3) serves too few tiles. Measured on Zen 4, 1 thread, M = 3200, K = 128-2048:
    256 rows gave float64 51-53 GFLOP/s where blocks of a fixed 256 KiB of A (64 rows
    at K = 512, float64) gave 41-46; float32 104-111 either way."""
    cdef int rows = 256
    cdef int r0 = 0, mb
    while r0 < m:
        if clstm_call_stopped(call):     # Ctrl-C: the call is abandoned
            return
        mb = rows if m - r0 > rows else m - r0
        weights_gemm(mb, n, k, a + <Py_ssize_t>r0 * lda, lda, packed, NULL, False,
                     <floating>(1 if accumulate else 0), c + <Py_ssize_t>r0 * ldc, ldc)
        r0 += mb


cdef void parallel_packed_gemm(int num_threads, int m, int k, int n, const floating* a,
                               int lda, const floating* packed, floating* c, int ldc,
                               bint accumulate, clstm_call* call) noexcept nogil:
    """C (m×n) (+)= A (m×k)·P from a packed P, the rows cut into blocks over the threads
    (the packed P is shared, read only)."""
    cdef int chunk, lo, hi
    cdef int parts = num_threads
    cdef double by_work = 2.0 * m * n * k / _min_flops_per_thread if _min_flops_per_thread > 0 else parts
    if parts > by_work:
        parts = <int>by_work
    if parts > m // 16:
        parts = m // 16
    if parts <= 1:
        packed_gemm_blocked(m, k, n, a, lda, packed, c, ldc, accumulate, call)
        return
    for chunk in prange(parts, num_threads=parts, schedule="static"):
        lo = split_point(m, parts, chunk)
        hi = split_point(m, parts, chunk + 1)
        if hi > lo:
            packed_gemm_blocked(hi - lo, k, n, a + <Py_ssize_t>lo * lda, lda, packed,
                                c + <Py_ssize_t>lo * ldc, ldc, accumulate, call)


cdef int weight_gradient(int num_threads, int g, int rows, int n, const floating* da,
                         const floating* x, int ldx, floating* dw,
                         clstm_call* call, int use_packed=-1) noexcept nogil:
    """dW (g×n) += daᵀ·X over ``rows`` rows: da (rows×g), X (rows×n, leading dimension
    ldx). X is packed and the transposed-A kernel reads da's columns from a small
    stack copy, where BLAS would pack the transposed da in a strided pass of its own.
    The rows of dW are cut into blocks over the threads. The reduction runs over blocks
    of a few GFLOP of rows (X packed block by block: 4 GFLOP in float32, 2 in float64,
    well under 100 ms on one AVX2 core), so that a long sequence notices a stop between
    them; dW passes through the cache once per block, against GFLOPs of arithmetic (all
    of S1-S5 run in one or two blocks). use_packed: 1 the packed kernel, 0 BLAS, -1 by the
    level's rule for whole-sequence products. Returns -2 when out of memory."""
    cdef int chunk, lo, hi, parts, r0, rb
    cdef floating* packed
    cdef double by_work
    cdef int block = <int>((4e9 if floating is float else 2e9) / (2.0 * g * n))
    block = (block // 256 + 1) * 256
    if use_packed == 0 or (use_packed < 0 and not packed_bulk()):
        parallel_gemm(num_threads, True, False, g, n, rows, <floating>1, da, g, x, ldx,
                      <floating>1, dw, n)
        return 0
    parts = num_threads
    by_work = 2.0 * g * n * rows / _min_flops_per_thread if _min_flops_per_thread > 0 else parts
    if parts > by_work:
        parts = <int>by_work
    if parts > g // 16:
        parts = g // 16
    r0 = 0
    while r0 < rows:
        if clstm_call_stopped(call):
            return 0
        rb = block if rows - r0 > block else rows - r0
        packed = pack_weights(rb, n, x + <Py_ssize_t>r0 * ldx, ldx, False, num_threads)
        if packed == NULL:
            return -2
        if parts <= 1:
            if floating is float:
                clstm_packed_gemm_at_f32(g, rb, n, da + <Py_ssize_t>r0 * g, g, packed, dw, n, 1)
            else:
                clstm_packed_gemm_at_f64(g, rb, n, da + <Py_ssize_t>r0 * g, g, packed, dw, n, 1)
        else:
            for chunk in prange(parts, num_threads=parts, schedule="static"):
                lo = split_point(g, parts, chunk)
                hi = split_point(g, parts, chunk + 1)
                if hi > lo:
                    if floating is float:
                        clstm_packed_gemm_at_f32(hi - lo, rb, n, da + <Py_ssize_t>r0 * g + lo,
                                                 g, packed, dw + <Py_ssize_t>lo * n, n, 1)
                    else:
                        clstm_packed_gemm_at_f64(hi - lo, rb, n, da + <Py_ssize_t>r0 * g + lo,
                                                 g, packed, dw + <Py_ssize_t>lo * n, n, 1)
        free(packed)
        r0 += rb
    return 0


# ---------------------------------------------------------------------------------------
# The row split's late-thread fallback. Each thread runs its block of rows through all
# steps with no barrier, so the call lasts as long as its slowest thread; with another
# process on a core, the thread the OS shares that core with runs a fraction of the time,
# and a 2-thread call took 1.2-3.7x the 1-thread time (S2, S3, forward and training, Zen
# 4, a busy loop on one of 2 cores).
# So a thread that has finished its block takes over the late one's remaining steps (one
# step at a time, in order: src/runtime.c's clstm_row_block), and the late thread, when
# it comes back, finds its block gone and leaves.

cdef bint _row_handover = True
cdef double _late_thread_delay = 0


def _set_row_handover(bint enabled):
    """Whether a thread done with its rows takes over a late thread's (default True;
    False: the static split, for A/B measurements). Returns the previous value."""
    global _row_handover
    old = _row_handover
    _row_handover = enabled
    return old


def _set_late_thread_delay(double seconds):
    """Tests: every thread but thread 0 sleeps this long before its first step of a row
    split (padded or packed) or, in a bidirectional layer whose directions run at once,
    before its direction, as a thread the OS has descheduled. Returns the previous
    value."""
    global _late_thread_delay
    old = _late_thread_delay
    _late_thread_delay = seconds
    return old


def _row_steps_taken_over():
    """Steps of the row split run by a thread other than the block's own, so far in this
    process."""
    return clstm_taken_over_steps()


def _set_max_lost_share(double share):
    """The share of a split region's time a team member may spend descheduled before the
    next calls run on one thread for a while (default 0.25; below 0: every team is late,
    above 1: none is). Returns the previous value."""
    return clstm_team_set_max_lost_share(share)


def _calls_on_one_thread():
    """Kernel calls left that run on one thread because a recent team was late."""
    return clstm_team_calls_on_one_thread()


def _reset_team_pause():
    """End a pause on one thread now (tests, benchmarks)."""
    clstm_team_reset()


def _team_pause_state(state=None):
    """(calls left on one thread, length of the last pause); with ``state``, set it.
    Returns the state before. For A/B timings that interleave settings."""
    cdef int left, pause
    clstm_team_pause_get(&left, &pause)
    if state is not None:
        clstm_team_pause_set(int(state[0]), int(state[1]))
    return (left, pause)


cdef inline void late_thread_pause(int me) noexcept nogil:
    # asleep, not spinning: like a descheduled thread, it loses wall time and no CPU time,
    # so the team's clock sees it late
    if me > 0 and _late_thread_delay > 0:
        clstm_sleep(_late_thread_delay)


cdef int next_block_step(int me, int n_blocks, clstm_row_block* blocks, int steps, int* s,
                         clstm_call* call) noexcept nogil:
    """A thread with no steps of its own left: takes over the next unfinished block of
    another thread, waiting for the step running there to end. Returns the block, with
    the step it has claimed there (and must run) in s[0]; -1 when every block is
    finished (or the call stopped)."""
    cdef int k, blk, step, spins
    for k in range(1, n_blocks + 1):
        blk = (me + k) % n_blocks
        spins = 0
        while True:
            step = clstm_block_take_over(&blocks[blk], steps)
            if step >= 0:
                s[0] = step
                return blk
            if step == -1 or clstm_call_stopped(call):
                break
            clstm_wait_a_little(&spins)
    return -1


cdef clstm_row_block* new_row_blocks(int n) noexcept nogil:
    """n blocks, no step claimed or done (NULL when out of memory)."""
    cdef void* buf = NULL
    if posix_memalign(&buf, 64, <size_t>n * sizeof(clstm_row_block)) != 0:
        return NULL
    memset(buf, 0, <size_t>n * sizeof(clstm_row_block))
    return <clstm_row_block*>buf


# A thread's walk through the row split's blocks, the same for every driver (padded and
# packed, forward and backward, both cells): its own block first, step by step, each step
# claimed before it runs and published after; then, with nothing of its own left, the
# next unfinished block of a late thread (next_block_step). The driver runs whatever
# step of whatever block walk_next hands it:
#
#     walk_begin(&w, blocks, n_blocks, steps, call)
#     while walk_next(&w, call):
#         <step w.s of block w.blk>
#     walk_end(&w, clock)
#
# walk_end times the thread for the team's clock (the call is late when a member lost
# too much of the region's time: see clstm_team_clock).

cdef struct block_walk:
    clstm_row_block* blocks
    int n_blocks
    int steps          # of every block
    int me             # this thread: block me is its own
    int blk            # the block being walked (-1: done)
    int s              # its next step (the one to run after walk_next returned True)
    int taken          # steps run of other threads' blocks
    bint held          # step s already claimed (by next_block_step)
    bint ran           # step s was handed out and has run
    double cpu0        # this thread's CPU time at the start


cdef inline void walk_begin(block_walk* w, clstm_row_block* blocks, int n_blocks, int steps,
                            clstm_call* call) noexcept nogil:
    w.blocks = blocks
    w.n_blocks = n_blocks
    w.steps = steps
    w.me = clstm_omp_thread_num()
    w.blk = w.me
    w.s = 0
    w.taken = 0
    w.held = False
    w.ran = False
    w.cpu0 = clstm_thread_cpu()
    late_thread_pause(w.me)
    if w.blk >= n_blocks:        # (a team larger than the blocks: only takes over)
        w.blk = next_block_step(w.me, n_blocks, blocks, steps, &w.s, call)
        w.held = w.blk >= 0


cdef inline bint walk_next(block_walk* w, clstm_call* call) noexcept nogil:
    """Publishes the step that ran last (if any); True with the next one to run in w.blk,
    w.s (claimed), False when this thread is done: every block finished, its own block
    taken over (it was late), or the call stopped."""
    if w.ran:
        clstm_block_done(&w.blocks[w.blk], w.s)
        if w.blk != w.me:
            w.taken += 1
        w.s += 1
        w.ran = False
    while w.blk >= 0:
        if w.s < w.steps:
            # (threads waiting for this block see a stop too)
            if clstm_call_stopped(call) or (not w.held
                                            and not clstm_block_take(&w.blocks[w.blk], w.s)):
                w.blk = -1
                return False
            w.held = False
            w.ran = True
            return True
        w.blk = next_block_step(w.me, w.n_blocks, w.blocks, w.steps, &w.s, call)
        w.held = w.blk >= 0
    return False


cdef inline void walk_end(block_walk* w, clstm_team_clock* clock) noexcept nogil:
    clstm_count_taken_over(w.taken)
    clstm_team_clock_check(clock, w.cpu0)


# ---------------------------------------------------------------------------------------
# Forward

cdef inline void forward_step(int t, int B, int I, int H, int b0, int b1,
                              const floating* x, const floating* w_ih_packed,
                              const floating* w_cat_packed,
                              const floating* w_hh, const floating* w_hh_packed,
                              const floating* bias, const floating* peephole,
                              const floating* h0, const floating* c0, floating* y,
                              floating* gates, floating* cells) noexcept nogil:
    """Step t of rows b0:b1. With w_cat_packed ([W_ihᵀ; W_hhᵀ] packed as one matrix),
    the step computes x_t·W_ihᵀ + h_{t-1}·W_hhᵀ in one product; with w_ih_packed, it
    first computes its own x_t·W_ihᵀ and then adds the recurrent product; with neither,
    the gates already hold x_t·W_ihᵀ."""
    cdef int rows = b1 - b0
    cdef int G = 4 * H
    cdef Py_ssize_t row0 = <Py_ssize_t>t * B + b0
    cdef const floating* h_prev
    cdef const floating* c_prev
    if t == 0:
        h_prev = h0 + <Py_ssize_t>b0 * H if h0 != NULL else NULL
        c_prev = c0 + <Py_ssize_t>b0 * H if c0 != NULL else NULL
    else:
        h_prev = y + (row0 - B) * H
        c_prev = cells + (row0 - B) * H
    if w_cat_packed != NULL:    # h_prev NULL: a zero state, the W_hh rows unused
        if floating is float:
            clstm_packed_gemm2_f32(rows, I, H, G, x + row0 * I, I, h_prev, H, w_cat_packed,
                                   gates + row0 * G, G, 0)
        else:
            clstm_packed_gemm2_f64(rows, I, H, G, x + row0 * I, I, h_prev, H, w_cat_packed,
                                   gates + row0 * G, G, 0)
    else:
        if w_ih_packed != NULL:
            weights_gemm(rows, G, I, x + row0 * I, I, w_ih_packed, NULL, True, <floating>0,
                         gates + row0 * G, G)
        if h_prev != NULL:
            weights_gemm(rows, G, H, h_prev, H, w_hh_packed, w_hh, True, <floating>1,
                         gates + row0 * G, G)
    gates_forward(rows, H, gates + row0 * G, bias, peephole, c_prev,
                  cells + row0 * H, y + row0 * H)


cdef void forward_rows(int T, int B, int I, int H, int b0, int b1, const floating* x,
                       const floating* w_ih_packed, const floating* w_cat_packed,
                       const floating* w_hh,
                       const floating* w_hh_packed, const floating* bias,
                       const floating* peephole, const floating* h0, const floating* c0,
                       floating* y, floating* gates, floating* cells,
                       clstm_call* call) noexcept nogil:
    """Rows b0:b1 of the batch through all T steps (see forward_step). Leaves early (the
    call abandoned) when asked to stop."""
    cdef int t
    for t in range(T):
        if clstm_call_stopped(call):
            return
        forward_step(t, B, I, H, b0, b1, x, w_ih_packed, w_cat_packed, w_hh, w_hh_packed,
                     bias, peephole, h0, c0, y, gates, cells)


cdef void forward_blocks(int T, int B, int I, int H, int n_blocks, clstm_row_block* blocks,
                         clstm_team_clock* clock,
                         const floating* x, const floating* w_ih_packed,
                         const floating* w_cat_packed,
                         const floating* w_hh, const floating* w_hh_packed,
                         const floating* bias, const floating* peephole,
                         const floating* h0, const floating* c0, floating* y,
                         floating* gates, floating* cells, clstm_call* call) noexcept nogil:
    """One thread's part of the forward's row split (called by every thread of the team):
    block k is rows k·B/n : (k+1)·B/n, thread k's own; a thread done with its own takes
    over what is left of a late thread's (see block_walk). Which thread runs a step
    changes nothing in its arithmetic: the results are those of forward_rows per block."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        forward_step(w.s, B, I, H, w.blk * B // n_blocks, (w.blk + 1) * B // n_blocks, x,
                     w_ih_packed, w_cat_packed, w_hh, w_hh_packed, bias, peephole, h0, c0, y,
                     gates, cells)
    walk_end(&w, clock)


cdef inline int unit_bound(int H, int parts, int i) noexcept nogil:
    """Boundary i of ``parts`` near-equal ranges of H hidden units, on multiples of 16
    (whole vectors in the gate loop)."""
    if i >= parts:
        return H
    cdef int p = (<long long>H * i // parts + 8) // 16 * 16
    return p if p < H else H


cdef inline int unit_split_threads(int num_threads, int n_chunks, int B, int H,
                                   int elem_size) noexcept nogil:
    """Threads for the hidden-unit split of the recurrence, or 1 for none (see
    forward_units): when the batch split leaves threads idle, or gives each thread at most
    2 rows while W_hh takes at least 1 MiB (every thread would stream all of it at every
    step for those few rows); with at least 16 units and enough work per step for each
    thread; and never when idle threads sleep (OMP_WAIT_POLICY=PASSIVE). Measured on
    Zen 4, 2 threads, T = 50-100, float32 and float64, units against
    rows: 1 row per thread 1.5-1.6x faster (H = 256), 2 rows 1.13-1.22x (H = 256-512),
    4 rows 0.92-1.08x, 8 or more 0.91-1.07x."""
    global _threads_used_last
    cdef int n = num_threads
    cdef bint idle = n_chunks < num_threads
    cdef bint few_rows = (n_chunks > 1 and B // n_chunks <= 2
                          and 4.0 * H * H * elem_size >= 1024.0 * 1024.0)
    if not (idle or few_rows) or not clstm_have_openmp():
        return 1
    if clstm_omp_passive_wait():
        # Every barrier would wake a sleeping thread: measured on the 2-core VM with
        # OMP_WAIT_POLICY=PASSIVE, B = 1, 2 threads, the split was 0.55x (H = 128) to
        # 1.04x (H = 1024) of one thread.
        return 1
    if n > H // 16:
        n = H // 16
    cdef double step_flops = 8.0 * B * H * H      # (B×H)·(H×4H)
    if _min_step_flops_per_unit_thread > 0 and n > step_flops / _min_step_flops_per_unit_thread:
        n = <int>(step_flops / _min_step_flops_per_unit_thread)
    if n <= n_chunks and not (few_rows and n > 1):
        return 1
    _threads_used_last = n
    return n


# A team that meets at a barrier every step runs only as fast as its slowest member. On a
# machine where another process holds a core, a member is descheduled for a time slice
# (milliseconds) at most barriers, and the split ran 17-35x slower than one thread (B = 1,
# T = 10 000-46 000, H = 256-512, 2 threads, a CPU hog on one of 2 cores). So thread 0
# times every step; once the steps' time beyond twice the fastest step exceeds this share
# of the time spent, the team leaves the split at the next step and thread 0 finishes the
# sequence alone. On a quiet machine steps take about the same time and the share stays
# near 0. Tests set 0 (leave after the first steps) or 2 (never).
cdef double _max_late_share = 0.25
cdef int _late_check_after_steps = 16
cdef int _team_left_last = -1


def _set_max_late_share(double share):
    """Set the share of time lost to late team members from which a per-step split
    leaves for one thread; returns the previous value."""
    global _max_late_share
    old = _max_late_share
    _max_late_share = share
    return old


def _team_left_at_last_call():
    """The iteration at which the last split time loop left for one thread, or -1."""
    return _team_left_last


cdef struct team_pace:
    double last      # when thread 0 last came out of a barrier
    double best      # the fastest step so far
    double spent     # all steps' time
    double late      # the steps' time beyond twice the fastest one
    int steps


cdef inline void pace_start(team_pace* pace) noexcept nogil:
    pace.last = clstm_monotonic()
    pace.best = 1e300
    pace.spent = 0
    pace.late = 0
    pace.steps = 0


cdef inline bint pace_step_is_late(team_pace* pace) noexcept nogil:
    """Thread 0, at the top of an iteration: account for the step just finished; True
    when the team should leave the split."""
    cdef double now = clstm_monotonic()
    cdef double dt = now - pace.last
    pace.last = now
    pace.steps += 1
    if dt < pace.best:
        pace.best = dt
    pace.spent += dt
    if dt > 2 * pace.best:
        pace.late += dt - 2 * pace.best
    return pace.steps >= _late_check_after_steps and pace.late > _max_late_share * pace.spent


cdef inline bint team_leaves(int t, int* leave_step, team_pace* pace,
                             clstm_call* call) noexcept nogil:
    """At the top of iteration t of a time loop whose team meets at a barrier every
    iteration: whether this thread leaves now. Thread 0 decides at iteration t for
    iteration t + 1 (before the barrier of t, which every thread passes before reading
    again), so all threads leave at the same iteration (see clstm_call_stop_at)."""
    if clstm_call_stop_at(call, t) or t >= leave_step[0]:
        return True
    if clstm_omp_thread_num() == 0 and t > 0 and leave_step[0] > t + 1:
        if pace_step_is_late(pace):
            leave_step[0] = t + 1
    return False


cdef void forward_units(int T, int B, int I, int H, const floating* x,
                        const floating* w_ih, const floating* w_hh, const floating* bias,
                        const floating* peephole, const floating* h0, const floating* c0,
                        floating* y, floating* gates, floating* cells,
                        int* failed, int* leave_step, clstm_call* call) noexcept nogil:
    """One thread's share of a layer's forward when the hidden units, not the rows, are
    split over the team (called inside a parallel region by every thread of it).

    The thread owns units u0:u1 of every gate. It packs its four slices of W_ih and of
    W_hh (rows g·H+u0 : g·H+u1) itself, computes its gate columns of the input
    projection for all T·B rows, then at each step the recurrent product into those
    columns and c and h of its units for all B rows. Step t+1 needs all of h_t, hence a
    barrier per step. With a batch of one there are no rows to split, and one thread
    would stream all of W_hh at every step: at H = 256-1024 float32 most of a step is
    that stream, which two threads read half each, from two L2 caches (measured on
    Zen 4, B = 1, T = 100, 2 threads against 1: 1.3x at H = 128, 1.5x at H = 256).

    The team leaves the time loop together at iteration leave_step[0] when it is late
    (see team_leaves); the caller runs the remaining steps.
    """
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, g, t
    cdef int G = 4 * H
    cdef floating* packed[4]
    cdef floating* packed_ih
    cdef Py_ssize_t row0, gate0
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef team_pace pace
    for g in range(4):
        packed[g] = NULL
        if u > 0:
            gate0 = <Py_ssize_t>g * H + u0
            packed_ih = pack_weights(I, u, w_ih + gate0 * I, I, True)
            packed[g] = pack_weights(H, u, w_hh + gate0 * H, H, True)
            if packed_ih == NULL or packed[g] == NULL:
                failed[0] = 1
            else:
                packed_gemm_blocked(T * B, I, u, x, I, packed_ih, gates + gate0, G, False,
                                    call)
            free(packed_ih)
    clstm_omp_barrier()                      # every thread sees any failure to pack
    pace_start(&pace)
    if failed[0] == 0:
        for t in range(T):
            if team_leaves(t, leave_step, &pace, call):
                break
            row0 = <Py_ssize_t>t * B
            if t == 0:
                h_prev = h0
                c_prev = c0
            else:
                h_prev = y + (row0 - B) * H
                c_prev = cells + (row0 - B) * H
            if u > 0:
                if h_prev != NULL:
                    for g in range(4):
                        weights_gemm(B, u, H, h_prev, H, packed[g], NULL, True, <floating>1,
                                     gates + row0 * G + <Py_ssize_t>g * H + u0, G)
                gates_forward_units(B, H, u0, u1, gates + row0 * G, bias, peephole, c_prev,
                                    cells + row0 * H, y + row0 * H)
            clstm_omp_barrier()              # h_t complete before any thread reads it
    for g in range(4):
        free(packed[g])


# ---------------------------------------------------------------------------------------
# The whole-sequence products beside the recurrence. A batch too small to split (one row,
# above all) gives a second thread nothing of the time loop: the row split has one block,
# and the hidden-unit split's barrier per step costs more than it saves below ~60 kFLOP
# per thread and step (H < ~120 at B = 1). Yet a third to two thirds of such a call is
# products over all T steps that depend on the time loop only through which steps are
# done: the forward's input projection x·W_ihᵀ (needed before each step) and the
# backward's dX = da·W_ih, dW_ih += daᵀX, dW_hh += daᵀH_prev and db (possible after each
# step). So thread 0 walks the steps and the second thread computes those products in
# chunks of steps beside it (thread 1 is "the helper").
#
# Nobody waits long on a descheduled peer (another process on its core): thread 0 never
# waits for the helper during the walk except for a chunk it needs that the helper is
# in the middle of; a chunk nobody has started, thread 0 computes itself. Chunks are
# claimed through a counter (compare-and-swap), so each runs once, whoever runs it.
# The backward's accumulations into dW_ih (with db) and dW_hh run in the chunks' fixed
# order (a turn counter per accumulator), so the sums, and the results, are the same bits
# whichever thread ran which chunk (not those of one thread's whole-sequence GEMMs:
# another order of the same sums).

cdef bint _overlap_products = True
cdef int _overlap_chunk_rows = 16
# The most chunks a call is cut into (longer chunks on long sequences: the counters and
# the kernels' setup per chunk stay a small part of the work).
cdef int _overlap_max_chunks = 256
# Whether the last forward or backward of the padded LSTM overlapped (tests).
cdef bint _overlapped_last = False


def _set_overlap_products(bint enabled):
    """Whether a call whose batch gives the team one block of rows (and no hidden-unit
    split) computes its whole-sequence products on a second thread beside the time loop
    (default True; False: before or after it on one thread, for A/B measurements).
    Returns the previous value."""
    global _overlap_products
    old = _overlap_products
    _overlap_products = enabled
    return old


def _set_overlap_chunk_rows(rows):
    """Rows (steps × batch rows) per chunk of the overlapped products (an int, at least
    1); returns the previous value."""
    global _overlap_chunk_rows
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise TypeError(f"rows: expected an int, got {type(rows).__name__}")
    if rows < 1:
        raise ValueError(f"rows: expected at least 1, got {rows}")
    old = _overlap_chunk_rows
    _overlap_chunk_rows = rows
    return old


def _overlap_chunks_run_by_caller():
    """Chunks of overlapped products that the caller's thread ran itself (a helper late
    or not yet started), so far in this process."""
    return clstm_caller_chunks()


def _set_overlap_strikes(int calls):
    """Late overlapped calls in a row that start the first pause on one thread (default
    2; 1: the first late call); returns the previous value."""
    if calls < 1:
        raise ValueError(f"calls: expected at least 1, got {calls}")
    return clstm_overlap_set_strikes(calls)


def _overlap_calls_skipped():
    """Calls left that would overlap their products but run on one thread, the overlap's
    recent losses to a late helper being too high (clstm_overlap_report in
    src/runtime.c); _reset_team_pause() ends it."""
    return clstm_overlap_calls_skipped()


def _last_call_overlapped():
    """Whether the last padded LSTM forward or backward ran its whole-sequence products
    beside the time loop."""
    return bool(_overlapped_last)


cdef inline int overlap_chunk_steps(int num_threads, int n_chunks, int n_units, int T,
                                    int B, double helper_flops) noexcept nogil:
    """Steps per chunk of the products overlapped with the time loop, or 0 when the call
    does not overlap them: a team of 2 or more whose rows form one block and whose units
    are not split, at least 2 chunks, and enough work for the helper (the threshold of
    any thread, _min_flops_per_thread); not when idle threads sleep
    (OMP_WAIT_POLICY=PASSIVE), nor while a late call's pause runs
    (clstm_overlap_allowed)."""
    global _threads_used_last, _overlapped_last
    cdef int k
    _overlapped_last = False
    if (not _overlap_products or num_threads < 2 or n_chunks > 1 or n_units > 1
            or not clstm_have_openmp()):
        return 0
    if clstm_omp_passive_wait():
        # The helper sleeps between calls and must be woken for each, and thread 0
        # waits for it at the region's end: measured with OMP_WAIT_POLICY=PASSIVE, S1
        # training at 2 threads took 1.6-1.8x the time of one.
        return 0
    if _min_flops_per_thread > 0 and helper_flops < _min_flops_per_thread:
        return 0
    k = (_overlap_chunk_rows + B - 1) // B
    if k < (T + _overlap_max_chunks - 1) // _overlap_max_chunks:
        k = (T + _overlap_max_chunks - 1) // _overlap_max_chunks
    if k >= T or not clstm_overlap_allowed():
        return 0
    _overlapped_last = True
    _threads_used_last = 2
    return k


cdef inline bint chunk_products_packed(int rows) noexcept nogil:
    """Whether a chunk's products (its rows few, as a step's) run on the packed kernels:
    the ISA level's rule for per-step products, not the whole-sequence one. Measured at
    AVX2 (S1 training, 2 threads, chunks of 16 rows, packed / BLAS time): LSTM 0.92,
    GRU 0.92-0.95."""
    return packed_steps(rows)


cdef clstm_counter* new_counters(int n) noexcept nogil:
    """n counters at 0, a cache line each (NULL when out of memory)."""
    cdef void* buf = NULL
    if posix_memalign(&buf, 64, <size_t>n * sizeof(clstm_counter)) != 0:
        return NULL
    memset(buf, 0, <size_t>n * sizeof(clstm_counter))
    return <clstm_counter*>buf


cdef inline bint wait_for_count(clstm_counter* counter, int at_least, clstm_call* call,
                                double* waited) noexcept nogil:
    """Waits (clstm_wait_beside) until the counter reaches at_least, adding
    the time waited to waited[0] (if not NULL); False when the call was stopped
    meanwhile."""
    cdef int spins = 0
    cdef double t0
    if clstm_counter_get(counter) >= at_least:
        return True
    t0 = clstm_monotonic() if waited != NULL else 0
    while clstm_counter_get(counter) < at_least:
        if clstm_call_stopped(call):
            break
        clstm_wait_beside(&spins)
    if waited != NULL:
        waited[0] += clstm_monotonic() - t0
    return clstm_counter_get(counter) >= at_least


# The end of an overlapped region. The helper, out of work, waits for thread 0 in a loop
# that yields its core rather than in the region's implicit barrier, where libgomp spins:
# on a machine whose other core another process holds, the helper shares thread 0's core
# and a spinning helper held thread 0 off it for time slices (S1, a busy loop pinned to
# the other core: 8 ms per forward instead of 0.1). pair[0] is set when the helper leaves,
# pair[1] when thread 0 is done; pair[2] and pair[3] are the cores thread 0 and the
# helper run on (clstm_beside_begin: the waits spin or yield by them).

cdef inline void caller_done(clstm_counter* pair, double start, double cpu0, double waited,
                             clstm_call* call) noexcept nogil:
    """Thread 0 of an overlapped region, its own work done: lets the helper go, waits for
    it to leave (timed: the implicit barrier would wait for it anyway), and reports the
    call's time and what it lost to the helper: the time it waited for it, or (when
    more) the time it was descheduled itself (clstm_overlap_report)."""
    cdef double elapsed, descheduled
    clstm_counter_set(&pair[1], 1)
    if clstm_omp_num_threads() > 1:
        wait_for_count(&pair[0], 1, call, &waited)
    clstm_beside_end()
    elapsed = clstm_monotonic() - start
    descheduled = elapsed - (clstm_thread_cpu() - cpu0)
    clstm_overlap_report(elapsed, waited if waited > descheduled else descheduled)


cdef inline void helper_done(clstm_counter* pair, clstm_call* call) noexcept nogil:
    """The helper, out of work: waits (yielding) for thread 0 to be done, then leaves."""
    wait_for_count(&pair[1], 1, call, <double*>NULL)
    clstm_beside_end()
    clstm_counter_set(&pair[0], 1)


cdef inline void projection_rows(Py_ssize_t r0, int rows, int I, int G, const floating* x,
                                 const floating* w_ih, const floating* packed_ih,
                                 floating* gates, clstm_call* call) noexcept nogil:
    """gates[r0 : r0 + rows] = x[r0 : r0 + rows]·W_ihᵀ, one thread."""
    if packed_ih != NULL:
        packed_gemm_blocked(rows, I, G, x + r0 * I, I, packed_ih, gates + r0 * G, G, False,
                            call)
    else:
        gemm(False, True, rows, G, I, <floating>1, x + r0 * I, I, w_ih, I, <floating>0,
             gates + r0 * G, G)


cdef inline bint projection_ready(int c, int T, int B, int I, int G, int K,
                                 clstm_counter* counters, const floating* x,
                                 const floating* w_ih, const floating* packed_ih,
                                 floating* gates, double* waited,
                                 clstm_call* call) noexcept nogil:
    """Thread 0, before the first step of chunk c (steps c·K : (c+1)·K): makes sure the
    chunk's input projection is in the gates, computing it when nobody has claimed it,
    else waiting for the helper that is computing it. counters[0] counts the chunks
    claimed, counters[1 + c] is 1 once chunk c is done (counters[1 + chunks] on:
    the pair of caller_done). False when the call was stopped
    while waiting."""
    cdef int t1 = (c + 1) * K if (c + 1) * K < T else T
    cdef clstm_counter* done = counters + 1
    clstm_beside_here()
    if clstm_counter_get(&done[c]) != 0:
        return True
    if clstm_counter_claim(counters, c):
        projection_rows(<Py_ssize_t>c * K * B, (t1 - c * K) * B, I, G, x, w_ih, packed_ih,
                        gates, call)
        clstm_counter_set(&done[c], 1)
        clstm_count_caller_chunks(1)
        return True
    return wait_for_count(&done[c], 1, call, waited)


cdef void project_ahead(int T, int B, int I, int G, int K, clstm_counter* counters,
                        const floating* x, const floating* w_ih, const floating* packed_ih,
                        floating* gates, clstm_call* call) noexcept nogil:
    """The helper of an overlapped forward: claims the chunks in order, ahead of thread
    0, and computes their input projection (counters as projection_ready)."""
    cdef int chunks = (T + K - 1) // K
    cdef int c, t1
    late_thread_pause(clstm_omp_thread_num())
    while True:
        c = clstm_counter_get(counters)
        if c >= chunks or clstm_call_stopped(call):
            break
        if clstm_counter_claim(counters, c):
            t1 = (c + 1) * K if (c + 1) * K < T else T
            projection_rows(<Py_ssize_t>c * K * B, (t1 - c * K) * B, I, G, x, w_ih,
                            packed_ih, gates, call)
            clstm_counter_set(&counters[1 + c], 1)
    helper_done(&counters[1 + chunks], call)


cdef void forward_overlapped(int T, int B, int I, int H, int K, clstm_counter* counters,
                             const floating* x,
                             const floating* w_ih, const floating* packed_ih,
                             const floating* w_hh, const floating* w_hh_packed,
                             const floating* bias, const floating* peephole,
                             const floating* h0, const floating* c0, floating* y,
                             floating* gates, floating* cells,
                             clstm_call* call) noexcept nogil:
    """One thread's part of an LSTM forward whose input projection runs beside the time
    loop (called by every thread of the team): thread 0 walks the steps (forward_step,
    the gates already holding x_t·W_ihᵀ), each chunk's projection made ready before its
    first step; the helper projects ahead. A row's projection is the same arithmetic
    whoever computes it."""
    cdef double waited = 0
    cdef double start = clstm_monotonic(), cpu0 = clstm_thread_cpu()
    cdef int chunks = (T + K - 1) // K
    cdef int c, t
    cdef bint running = True
    cdef clstm_counter* pair = counters + 1 + chunks
    cdef int me = clstm_omp_thread_num()
    clstm_beside_begin(&pair[2 + me], &pair[3 - me])
    if me == 0:
        for c in range(chunks):
            if not projection_ready(c, T, B, I, 4 * H, K, counters, x, w_ih, packed_ih,
                                    gates, &waited, call):
                break
            for t in range(c * K, (c + 1) * K if (c + 1) * K < T else T):
                if clstm_call_stopped(call):
                    running = False
                    break
                forward_step(t, B, I, H, 0, B, x, <const floating*>NULL,
                             <const floating*>NULL, w_hh, w_hh_packed, bias, peephole, h0,
                             c0, y, gates, cells)
            if not running:
                break
        caller_done(&counters[1 + chunks], start, cpu0, waited, call)
    else:
        project_ahead(T, B, I, 4 * H, K, counters, x, w_ih, packed_ih, gates, call)


cdef inline bint all_finite(Py_ssize_t n, const floating* a) noexcept nogil:
    if floating is float:
        return clstm_all_finite_f32(n, a)
    else:
        return clstm_all_finite_f64(n, a)


cdef void add_zero_state_product(int B, int G, int H, const floating* w_hh,
                                 floating* gates) noexcept nogil:
    """gates (B×G) += 0·W_hhᵀ, done as IEEE arithmetic says (NaN where a row of W_hh
    holds inf or NaN), for a zero state whose product is otherwise skipped. (BLAS may
    not read W_hh at all when alpha is 0, so it cannot be asked to do this.)"""
    cdef int g, r, j
    cdef floating acc
    for g in range(G):
        acc = 0
        for j in range(H):
            acc += w_hh[<Py_ssize_t>g * H + j] * 0
        if acc != 0:
            for r in range(B):
                gates[<Py_ssize_t>r * G + g] += acc


cdef floating* zeros_if_needed(const floating* state, int B, int H, const floating* w_hh,
                               bint* failed) noexcept nogil:
    """A zero (B×H) state to run the first step's recurrent product on when no initial
    state was given but W_hh holds inf or NaN: skipping 0·W_hh would drop them, where
    IEEE arithmetic (and PyTorch) gives NaN. NULL otherwise: the product is skipped."""
    cdef void* buf = NULL
    if state != NULL or all_finite(<Py_ssize_t>4 * H * H, w_hh):
        return NULL
    if posix_memalign(&buf, 64, <size_t>B * H * sizeof(floating)) != 0:
        failed[0] = True
        return NULL
    memset(buf, 0, <size_t>B * H * sizeof(floating))
    return <floating*>buf


cdef int layer_forward(int T, int B, int I, int H, const floating* x, const floating* w_ih,
                       const floating* w_hh, const floating* bias, const floating* peephole,
                       const floating* h0, const floating* c0, floating* y,
                       floating* workspace, int num_threads,
                       clstm_call* call) noexcept nogil:
    """Returns 0, -1 for bad sizes, -2 when out of memory, -3 when the call was asked to
    stop (its outputs are then incomplete)."""
    global _units_split_last, _team_left_last, _overlapped_last
    cdef int chunk, n_chunks, t1
    cdef int G = 4 * H
    _overlapped_last = False
    if not sizes_ok(T, B, I, H):
        return -1
    cdef floating* gates = workspace
    cdef floating* cells = workspace + <Py_ssize_t>T * B * G
    cdef floating* packed = NULL
    cdef floating* packed_ih = NULL
    cdef bint no_memory = False
    cdef floating* zero_h0 = zeros_if_needed(h0, B, H, w_hh, &no_memory)
    if no_memory:
        return -2
    if zero_h0 != NULL:
        h0 = zero_h0
    cdef int failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_team_clock clock
    num_threads = clstm_team_threads(num_threads)
    n_chunks = thread_count(num_threads, T, B, H)
    cdef int n_units = (unit_split_threads(num_threads, n_chunks, B, H, sizeof(floating))
                        if packed_steps(B) and T > 1 else 1)
    _units_split_last = n_units > 1
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            forward_units(T, B, I, H, x, w_ih, w_hh, bias, peephole, h0, c0, y, gates,
                          cells, &failed, &leave_step, call)
        t1 = leave_step
        # a units split that left is sure evidence: the pause starts at once
        clstm_team_report(2 if t1 < T and not clstm_call_stopped(call) else 0)
        if not failed and t1 < T and not clstm_call_stopped(call):
            # The team was late: this thread runs the remaining steps alone, on all
            # units (the gates already hold their input projection).
            _team_left_last = t1
            packed = pack_weights(H, G, w_hh, H, True)
            failed = packed == NULL
            if not failed:
                if t1 > 0:
                    h0 = y + <Py_ssize_t>(t1 - 1) * B * H
                    c0 = cells + <Py_ssize_t>(t1 - 1) * B * H
                forward_rows(T - t1, B, I, H, 0, B, x + <Py_ssize_t>t1 * B * I, NULL, NULL,
                             w_hh,
                             packed, bias, peephole, h0, c0, y + <Py_ssize_t>t1 * B * H,
                             gates + <Py_ssize_t>t1 * B * G, cells + <Py_ssize_t>t1 * B * H,
                             call)
            free(packed)
        clstm_blas_leave()
        free(zero_h0)
        if failed:
            return -2
        return -3 if clstm_call_stopped(call) else 0
    cdef bint steps_packed = packed_steps(B // n_chunks) and T > 1
    cdef bint step_projection = (steps_packed
                                 and B // n_chunks >= _min_rows_per_step_projection
                                 and (<double>I + H) * G * sizeof(floating)
                                 <= _max_step_weights_bytes)
    # Per-step projection: with _fused_step_products, [W_ihᵀ; W_hhᵀ] packed as one
    # matrix and one product per step (clstm_packed_gemm2), else W_ih and W_hh apart.
    cdef bint fused = step_projection and _fused_step_products
    # A batch the team cannot split: the projection in chunks beside the time loop
    cdef int overlap_k = (0 if step_projection else
                          overlap_chunk_steps(num_threads, n_chunks, n_units, T, B,
                                              2.0 * T * B * G * I))
    cdef bint ih_packed = ((step_projection and not fused)
                           or (overlap_k == 0 and packed_bulk() and T > 1
                               and not step_projection)
                           or (overlap_k > 0 and chunk_products_packed(overlap_k * B)))
    cdef floating* packed_cat = NULL
    if fused:
        packed_cat = pack_weights_cat(I, H, G, w_ih, I, w_hh, H, True, num_threads)
    elif steps_packed:
        packed = pack_weights(H, G, w_hh, H, True, num_threads)     # P = W_hhᵀ
    if ih_packed:
        packed_ih = pack_weights(I, G, w_ih, I, True, num_threads)  # P = W_ihᵀ
    if ((fused and packed_cat == NULL) or (steps_packed and not fused and packed == NULL)
            or (ih_packed and packed_ih == NULL)):
        free(packed_cat)
        free(packed)
        free(packed_ih)
        free(zero_h0)
        clstm_blas_leave()
        return -2
    # The input projection x·W_ihᵀ: with a few rows per thread, each thread computes it
    # step by step for its own rows, just before the recurrent product that adds to the
    # same gates, which are then still in its cache. Measured at 1 thread on Zen 4
    # against one upfront GEMM that writes all T steps' gates out to memory and reads
    # them back: 2-9% faster while W_ih and W_hh together fit in about 4 MiB, 1-3%
    # slower beyond (H = 512: both weights then stream from L3 at every step). With
    # fewer rows each step would be a matrix-vector product, streaming W_ih at 2 flops
    # per value: then all T steps at once, (T·B × I)·(I × 4H).
    cdef bint per_step = step_projection
    cdef clstm_counter* counters = NULL
    if overlap_k > 0:
        counters = new_counters(5 + (T + overlap_k - 1) // overlap_k)
        if counters == NULL:
            failed = 1
        else:
            with parallel(num_threads=2):
                forward_overlapped(T, B, I, H, overlap_k, counters, x, w_ih,
                                   packed_ih, w_hh, packed, bias, peephole, h0, c0, y,
                                   gates, cells, call)
            free(counters)
    elif not per_step:
        if packed_ih != NULL:
            parallel_packed_gemm(num_threads, T * B, I, G, x, I, packed_ih, gates, G, False,
                                 call)
            free(packed_ih)
            packed_ih = NULL
        else:
            parallel_gemm(num_threads, False, True, T * B, G, I, <floating>1, x, I, w_ih,
                          I, <floating>0, gates, G)
    if overlap_k > 0:
        pass                                      # done above
    elif n_chunks > 1 and _row_handover:
        blocks = new_row_blocks(n_chunks)
        if blocks == NULL:
            failed = 1
        else:
            clstm_team_clock_start(&clock)
            with parallel(num_threads=n_chunks):
                forward_blocks(T, B, I, H, n_chunks, blocks, &clock, x, packed_ih,
                               packed_cat, w_hh, packed, bias, peephole, h0, c0, y, gates,
                               cells, call)
            free(blocks)
            clstm_team_report(clock.late)
    elif n_chunks > 1:
        for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
            forward_rows(T, B, I, H, chunk * B // n_chunks, (chunk + 1) * B // n_chunks,
                         x, packed_ih, packed_cat, w_hh, packed, bias, peephole, h0, c0, y,
                         gates, cells, call)
    else:
        forward_rows(T, B, I, H, 0, B, x, packed_ih, packed_cat, w_hh, packed, bias,
                     peephole, h0, c0, y, gates, cells, call)
    clstm_blas_leave()
    free(packed_cat)
    free(packed_ih)
    free(packed)
    free(zero_h0)
    if failed:
        return -2
    return -3 if clstm_call_stopped(call) else 0


cdef void layer_step(int B, int I, int H, const floating* x, const floating* w_ih,
                     const floating* w_hh, const floating* b_ih, const floating* b_hh,
                     const floating* peephole, const floating* h, const floating* c,
                     floating* h_out, floating* c_out, floating* gates) noexcept nogil:
    """One time step of one layer, for serving: no sequence workspace, nothing saved.
    ``gates`` is (B, 4H) scratch; ``h``/``c`` may be NULL for a zero state."""
    cdef int r, G = 4 * H
    # Start the gates at b_ih and let the GEMMs add into them; b_hh is added in the
    # fused loop, so the two biases are never summed into a temporary.
    for r in range(B):
        memcpy(gates + <Py_ssize_t>r * G, b_ih, G * sizeof(floating))
    if h == NULL and not all_finite(<Py_ssize_t>G * H, w_hh):
        add_zero_state_product(B, G, H, w_hh, gates)
    if B == 1:
        gemv_rows(G, I, <floating>1, w_ih, I, x, <floating>1, gates)
        if h != NULL:
            gemv_rows(G, H, <floating>1, w_hh, H, h, <floating>1, gates)
    else:
        gemm(False, True, B, G, I, <floating>1, x, I, w_ih, I, <floating>1, gates, G)
        if h != NULL:
            gemm(False, True, B, G, H, <floating>1, h, H, w_hh, H, <floating>1, gates, G)
    gates_forward(B, H, gates, b_hh, peephole, c, c_out, h_out)


# ---------------------------------------------------------------------------------------
# Backward

cdef inline void backward_step(int t, int B, int H, int b0, int b1, const floating* w_hh,
                               const floating* w_hh_packed, const floating* peephole,
                               const floating* c0, floating* gates, const floating* cells,
                               floating* dy, floating* dh0, floating* dc) noexcept nogil:
    """Step t of rows b0:b1 backwards. dy[t] is dL/dh_t, and receives the recurrent
    gradient of step t+1 before step t reads it; dc runs dL/dc_t backwards."""
    cdef int rows = b1 - b0
    cdef int G = 4 * H
    cdef Py_ssize_t row0 = <Py_ssize_t>t * B + b0
    cdef const floating* c_prev
    if t > 0:
        c_prev = cells + (row0 - B) * H
    else:
        c_prev = c0 + <Py_ssize_t>b0 * H if c0 != NULL else NULL
    gates_backward(rows, H, gates + row0 * G, peephole, c_prev, cells + row0 * H,
                   dy + row0 * H, dc + <Py_ssize_t>b0 * H)
    if t > 0:   # dL/dh_{t-1} += da_t · W_hh
        weights_gemm(rows, H, G, gates + row0 * G, G, w_hh_packed, w_hh, False,
                     <floating>1, dy + (row0 - B) * H, H)
    else:
        weights_gemm(rows, H, G, gates + row0 * G, G, w_hh_packed, w_hh, False,
                     <floating>0, dh0 + <Py_ssize_t>b0 * H, H)


cdef void backward_rows(int T, int B, int H, int b0, int b1, const floating* w_hh,
                        const floating* w_hh_packed, const floating* peephole,
                        const floating* c0, floating* gates, const floating* cells,
                        floating* dy, floating* dh0, floating* dc,
                        clstm_call* call) noexcept nogil:
    """Rows b0:b1 back through all T steps (see backward_step). Leaves early (the call
    abandoned) when asked to stop."""
    cdef int t
    for t in range(T - 1, -1, -1):
        if clstm_call_stopped(call):
            return
        backward_step(t, B, H, b0, b1, w_hh, w_hh_packed, peephole, c0, gates, cells, dy,
                      dh0, dc)


cdef void backward_blocks(int T, int B, int H, int n_blocks, clstm_row_block* blocks,
                          clstm_team_clock* clock,
                          const floating* w_hh, const floating* w_hh_packed,
                          const floating* peephole, const floating* c0, floating* gates,
                          const floating* cells, floating* dy, floating* dh0, floating* dc,
                          clstm_call* call) noexcept nogil:
    """One thread's part of the backward's row split, as forward_blocks: block step s is
    time step T-1-s, and a late thread's remaining steps are taken over."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        backward_step(T - 1 - w.s, B, H, w.blk * B // n_blocks, (w.blk + 1) * B // n_blocks,
                      w_hh, w_hh_packed, peephole, c0, gates, cells, dy, dh0, dc)
    walk_end(&w, clock)


cdef void backward_units(int T, int B, int H, const floating* w_hh,
                         const floating* peephole, const floating* c0, floating* gates,
                         const floating* cells, floating* dy, floating* dh0, floating* dc,
                         int* failed, int* leave_step, clstm_call* call) noexcept nogil:
    """One thread's share of the backward time loop split by hidden units, as the forward
    (forward_units): the thread owns units u0:u1, turns their gates into da_t and carries
    their dc, and after a barrier (da_t of all units is needed) computes their part of
    dL/dh_{t-1} = da_t · W_hh[:, u0:u1] into its own columns of dy, which only it reads
    at the next step. Iteration it runs step T-1-it; the team leaves together at
    iteration leave_step[0] when it is late, and the caller runs the remaining steps."""
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, t, it
    cdef int G = 4 * H
    cdef floating* packed = NULL
    cdef Py_ssize_t row0
    cdef const floating* c_prev
    cdef team_pace pace
    if u > 0:
        packed = pack_weights(G, u, w_hh + u0, H, False)    # P = W_hh[:, u0:u1] (4H × u)
        if packed == NULL:
            failed[0] = 1
    clstm_omp_barrier()                      # every thread sees any failure to pack
    pace_start(&pace)
    if failed[0] == 0:
        for it in range(T):
            if team_leaves(it, leave_step, &pace, call):
                break
            t = T - 1 - it
            row0 = <Py_ssize_t>t * B
            c_prev = cells + (row0 - B) * H if t > 0 else c0
            if u > 0:
                gates_backward_units(B, H, u0, u1, gates + row0 * G, peephole, c_prev,
                                     cells + row0 * H, dy + row0 * H, dc)
            clstm_omp_barrier()              # da_t complete before any thread reads it
            if u > 0:
                if t > 0:
                    weights_gemm(B, u, G, gates + row0 * G, G, packed, NULL, False,
                                 <floating>1, dy + (row0 - B) * H + u0, H)
                else:
                    weights_gemm(B, u, G, gates + row0 * G, G, packed, NULL, False,
                                 <floating>0, dh0 + u0, H)
    free(packed)


cdef inline bint wait_for_turn(clstm_counter* turn, int c, clstm_call* call,
                               double* waited) noexcept nogil:
    """Waits until it is chunk c's turn to add into an accumulator (every chunk before it
    has added), adding the time waited to waited[0] (if not NULL); False when the call was
    stopped meanwhile."""
    cdef int spins = 0
    cdef double t0
    if clstm_counter_get(turn) == c:
        return True
    t0 = clstm_monotonic() if waited != NULL else 0
    while clstm_counter_get(turn) != c:
        if clstm_call_stopped(call):
            break
        clstm_wait_beside(&spins)
    if waited != NULL:
        waited[0] += clstm_monotonic() - t0
    return clstm_counter_get(turn) == c


cdef int backward_chunk_products(int c, int T, int B, int I, int H, int G, int K,
                                 clstm_counter* counters, const floating* x,
                                 const floating* w_ih, const floating* packed_ih,
                                 const floating* h0, const floating* y,
                                 const floating* da_ih, const floating* da_hh,
                                 floating* dx, floating* dw_ih, floating* dw_hh,
                                 floating* db_ih, floating* db_hh, double* waited,
                                 clstm_call* call) noexcept nogil:
    """The whole-sequence products of chunk c of a backward (steps T-(c+1)·K : T-c·K,
    whose gradients are final), G gate columns: dX of its rows = da_ih·W_ih, then, at
    its turn (counters[1]), dW_ih += da_ihᵀX and db_ih += Σ da_ih, then at its turn
    (counters[2]) dW_hh += da_hhᵀH_prev and db_hh += Σ da_hh (the LSTM's da_hh is its
    da_ih, and its one bias gradient db_ih; the GRU's are dgi and dgh, NULL biases
    without bias). One thread; the turns pass to chunk c + 1 even when a product fails
    (out of memory: returns -2), so that nobody waits forever."""
    cdef int t1 = T - c * K
    cdef int t0 = t1 - K if t1 > K else 0
    cdef Py_ssize_t r0 = <Py_ssize_t>t0 * B
    cdef int rows = (t1 - t0) * B
    cdef const floating* dgi = da_ih + r0 * G
    cdef const floating* dgh = da_hh + r0 * G
    cdef int status = 0
    if dx != NULL:      # dX = da · W_ih
        if packed_ih != NULL:
            packed_gemm_blocked(rows, G, I, dgi, G, packed_ih, dx + r0 * I, I, False, call)
        else:
            gemm(False, False, rows, I, G, <floating>1, dgi, G, w_ih, I, <floating>0,
                 dx + r0 * I, I)
    if not wait_for_turn(&counters[1], c, call, waited):
        return 0
    status |= weight_gradient(1, G, rows, I, dgi, x + r0 * I, I, dw_ih, call,
                              chunk_products_packed(rows))
    if db_ih != NULL:
        parallel_column_sums(1, rows, G, dgi, db_ih)
    clstm_counter_set(&counters[1], c + 1)
    if not wait_for_turn(&counters[2], c, call, waited):
        return 0
    # H_prev is y one step back, h0 (none: zeros, nothing to add) for step 0
    if t0 > 0:
        status |= weight_gradient(1, G, rows, H, dgh, y + (r0 - B) * H, H, dw_hh, call,
                                  chunk_products_packed(rows))
    else:
        if rows > B:
            status |= weight_gradient(1, G, rows - B, H, dgh + <Py_ssize_t>B * G, y, H,
                                      dw_hh, call, chunk_products_packed(rows))
        if h0 != NULL:
            status |= weight_gradient(1, G, B, H, dgh, h0, H, dw_hh, call,
                                      chunk_products_packed(rows))
    if db_hh != NULL:
        parallel_column_sums(1, rows, G, dgh, db_hh)
    clstm_counter_set(&counters[2], c + 1)
    return status


cdef int take_backward_chunks(int T, int B, int I, int H, int G, int K,
                              clstm_counter* counters, const floating* x,
                              const floating* w_ih, const floating* packed_ih,
                              const floating* h0, const floating* y,
                              const floating* da_ih, const floating* da_hh, floating* dx,
                              floating* dw_ih, floating* dw_hh, floating* db_ih,
                              floating* db_hh, double* waited,
                              clstm_call* call) noexcept nogil:
    """Claims and runs chunks of an overlapped backward until none is left
    (backward_chunk_products): the helper from the start, as the walk finishes them,
    thread 0 once its walk is done. counters: [0] the steps the walk has finished, [1]
    and [2] the two turns, [3] the chunks claimed, [4] to [7] the pair of caller_done.
    waited: thread 0's time waiting for a turn. A chunk is claimed only once it is
    final, so that nobody holds one while waiting for the walk. Returns 0, or -2 when
    out of memory."""
    cdef int chunks = (T + K - 1) // K
    cdef int me = clstm_omp_thread_num()
    cdef int c, need, spins = 0
    cdef int status = 0
    while True:
        c = clstm_counter_get(&counters[3])
        if c >= chunks or clstm_call_stopped(call):
            break
        need = (c + 1) * K if (c + 1) * K < T else T
        if clstm_counter_get(&counters[0]) < need:      # (only the helper waits here)
            clstm_wait_beside(&spins)
            continue
        if clstm_counter_claim(&counters[3], c):
            status |= backward_chunk_products(c, T, B, I, H, G, K, counters, x, w_ih,
                                              packed_ih, h0, y, da_ih, da_hh, dx, dw_ih,
                                              dw_hh, db_ih, db_hh, waited, call)
            if me == 0:
                clstm_count_caller_chunks(1)
            spins = 0
    return status


cdef void backward_overlapped(int T, int B, int I, int H, int K, clstm_counter* counters,
                              const floating* x,
                              const floating* w_ih, const floating* packed_ih,
                              const floating* w_hh, const floating* w_hh_packed,
                              const floating* peephole, const floating* h0,
                              const floating* c0, const floating* y, floating* gates,
                              const floating* cells, floating* dy, floating* dh0,
                              floating* dc, floating* dx, floating* dw_ih, floating* dw_hh,
                              floating* dbias, int* failed,
                              clstm_call* call) noexcept nogil:
    """One thread's part of an LSTM backward whose whole-sequence products run beside the
    time loop (called by every thread of the team). Thread 0 walks the steps back
    (backward_step over all rows), publishing each one, and never waits for the helper;
    then it takes the chunks left, waiting only for a turn that a chunk the helper is in
    the middle of holds (take_backward_chunks)."""
    cdef double waited = 0
    cdef double start = clstm_monotonic(), cpu0 = clstm_thread_cpu()
    cdef int me = clstm_omp_thread_num()
    cdef int it
    clstm_beside_begin(&counters[6 + me], &counters[7 - me])
    if me == 0:
        for it in range(T):
            if clstm_call_stopped(call):
                break
            backward_step(T - 1 - it, B, H, 0, B, w_hh, w_hh_packed, peephole, c0, gates,
                          cells, dy, dh0, dc)
            clstm_counter_set(counters, it + 1)
            clstm_beside_here()
    else:
        late_thread_pause(me)
    if take_backward_chunks(T, B, I, H, 4 * H, K, counters, x, w_ih, packed_ih, h0, y,
                            gates, gates, dx, dw_ih, dw_hh, dbias, <floating*>NULL,
                            &waited if me == 0 else NULL, call) != 0:
        failed[0] = 1
    if me == 0:
        caller_done(&counters[4], start, cpu0, waited, call)
    else:
        helper_done(&counters[4], call)


cdef void parallel_column_sums(int num_threads, Py_ssize_t rows, int n, const floating* da,
                               floating* db) noexcept nogil:
    """db += the column sums of da (rows × n), the columns cut into blocks over the
    threads (a serial pass over all of da otherwise, with the other threads idle)."""
    cdef int parts = num_threads, chunk, lo, hi
    if parts > n // 16:
        parts = n // 16
    if <double>rows * n * sizeof(floating) < _min_parallel_pass_bytes:
        parts = 1
    if parts <= 1:
        if floating is float:
            clstm_column_sums_f32(rows, n, da, n, db)
        else:
            clstm_column_sums_f64(rows, n, da, n, db)
        return
    for chunk in prange(parts, num_threads=parts, schedule="static"):
        lo = split_point(n, parts, chunk)
        hi = split_point(n, parts, chunk + 1)
        if hi > lo:
            if floating is float:
                clstm_column_sums_f32(rows, hi - lo, da + lo, n, db + lo)
            else:
                clstm_column_sums_f64(rows, hi - lo, da + lo, n, db + lo)


cdef int layer_backward(int T, int B, int I, int H, const floating* x,
                        const floating* w_ih, const floating* w_hh,
                        const floating* peephole, const floating* h0, const floating* c0,
                        const floating* y, floating* workspace, floating* dy,
                        const floating* dh_n, const floating* dc_n, floating* dx,
                        floating* dh0, floating* dc0, floating* dw_ih, floating* dw_hh,
                        floating* dbias, floating* dpeephole, int num_threads,
                        clstm_call* call) noexcept nogil:
    """Returns 0, -1 for bad sizes, -2 when out of memory, -3 when the call was asked to
    stop (the gradients are then incomplete: some may have been added to)."""
    global _team_left_last, _overlapped_last
    cdef int chunk, n_chunks, rest
    cdef int G = 4 * H
    cdef Py_ssize_t k, TB = <Py_ssize_t>T * B, BH = <Py_ssize_t>B * H
    if not sizes_ok(T, B, I, H):
        return -1
    cdef floating* gates = workspace
    cdef floating* cells = workspace + TB * G
    cdef floating* dy_last = dy + (TB - B) * H
    if dh_n != NULL:
        for k in range(BH):
            dy_last[k] += dh_n[k]
    if dc_n != NULL:
        memcpy(dc0, dc_n, BH * sizeof(floating))
    else:
        memset(dc0, 0, BH * sizeof(floating))

    cdef floating* packed = NULL
    cdef floating* packed_ih = NULL
    cdef int failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_counter* counters = NULL
    cdef clstm_team_clock clock
    cdef int overlap_k = 0
    _overlapped_last = False
    num_threads = clstm_team_threads(num_threads)
    n_chunks = thread_count(num_threads, T, B, H)
    cdef int n_units = (unit_split_threads(num_threads, n_chunks, B, H, sizeof(floating))
                        if packed_steps(B) and T > 1 else 1)
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            backward_units(T, B, H, w_hh, peephole, c0, gates, cells, dy, dh0, dc0,
                           &failed, &leave_step, call)
        rest = T - leave_step          # steps T-1-leave_step .. 0 remain
        clstm_team_report(2 if rest > 0 and not clstm_call_stopped(call) else 0)
        if not failed and rest > 0 and not clstm_call_stopped(call):
            _team_left_last = leave_step
            packed = pack_weights(G, H, w_hh, H, False)             # P = W_hh
            failed = packed == NULL
            if not failed:
                backward_rows(rest, B, H, 0, B, w_hh, packed, peephole, c0, gates, cells,
                              dy, dh0, dc0, call)
            free(packed)
    else:
        if packed_steps(B // n_chunks) and T > 1:
            packed = pack_weights(G, H, w_hh, H, False, num_threads)   # P = W_hh
            failed = packed == NULL
        # A batch the team cannot split: dX, the weight and bias gradients in chunks
        # beside the time loop
        overlap_k = overlap_chunk_steps(num_threads, n_chunks, n_units, T, B,
                                        2.0 * T * B * G * (I + H + (I if dx != NULL else 0)))
        if not failed and overlap_k > 0:
            if dx != NULL and chunk_products_packed(overlap_k * B):
                packed_ih = pack_weights(G, I, w_ih, I, False)          # P = W_ih
                failed = packed_ih == NULL
            counters = new_counters(8)
            failed = failed or counters == NULL
            if not failed:
                with parallel(num_threads=2):
                    backward_overlapped(T, B, I, H, overlap_k, counters, x, w_ih,
                                        packed_ih, w_hh, packed, peephole, h0, c0, y,
                                        gates, cells, dy, dh0, dc0, dx, dw_ih, dw_hh,
                                        dbias, &failed, call)
            free(counters)
            free(packed_ih)
            packed_ih = NULL
        elif not failed and n_chunks > 1 and _row_handover:
            blocks = new_row_blocks(n_chunks)
            failed = blocks == NULL
            if not failed:
                clstm_team_clock_start(&clock)
                with parallel(num_threads=n_chunks):
                    backward_blocks(T, B, H, n_chunks, blocks, &clock, w_hh, packed,
                                    peephole, c0, gates, cells, dy, dh0, dc0, call)
                free(blocks)
                clstm_team_report(clock.late)
        elif not failed and n_chunks > 1:
            for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
                backward_rows(T, B, H, chunk * B // n_chunks, (chunk + 1) * B // n_chunks,
                              w_hh, packed, peephole, c0, gates, cells, dy, dh0, dc0, call)
        elif not failed:
            backward_rows(T, B, H, 0, B, w_hh, packed, peephole, c0, gates, cells, dy, dh0,
                          dc0, call)
        free(packed)
    if failed or clstm_call_stopped(call):
        clstm_blas_leave()
        return -2 if failed else -3

    # The gates buffer now holds da for all T·B rows: the rest is a few large GEMMs
    # (done already when they ran beside the time loop).
    cdef floating* da = gates
    cdef int status = 0
    if overlap_k > 0:
        clstm_blas_leave()
        if peephole != NULL and dpeephole != NULL:
            peephole_grads(T, B, H, da, cells, c0, dpeephole)
        return 0
    if dx != NULL:      # dX = da · W_ih
        if packed_bulk():
            packed_ih = pack_weights(G, I, w_ih, I, False, num_threads)  # P = W_ih
        if packed_ih != NULL:
            parallel_packed_gemm(num_threads, T * B, G, I, da, G, packed_ih, dx, I, False,
                                 call)
            free(packed_ih)
        else:
            parallel_gemm(num_threads, False, False, T * B, I, G, <floating>1, da, G, w_ih,
                          I, <floating>0, dx, I)
    # dW_ih += daᵀ · X
    status |= weight_gradient(num_threads, G, T * B, I, da, x, I, dw_ih, call)
    # dW_hh += daᵀ · H_prev, where H_prev is y shifted one step (and h0 for t = 0)
    if T > 1:
        status |= weight_gradient(num_threads, G, (T - 1) * B, H, da + <Py_ssize_t>B * G,
                                  y, H, dw_hh, call)
    if h0 != NULL:
        status |= weight_gradient(num_threads, G, B, H, da, h0, H, dw_hh, call)
    clstm_blas_leave()
    if status != 0:
        return -2
    if clstm_call_stopped(call):
        return -3
    parallel_column_sums(num_threads, TB, G, da, dbias)
    if floating is float:
        if peephole != NULL and dpeephole != NULL:
            clstm_peephole_grads_f32(T, B, H, da, cells, c0, dpeephole)
    else:
        if peephole != NULL and dpeephole != NULL:
            clstm_peephole_grads_f64(T, B, H, da, cells, c0, dpeephole)
    return 0


# ---------------------------------------------------------------------------------------
# Variable lengths and directions: the packed layout
#
# A batch of sequences of different lengths runs in PyTorch's packed layout (what
# pack_padded_sequence gives): rows ordered by non-increasing length, step t holding the
# batch_sizes[t] rows still running, the steps one after another, so step t occupies
# rows off[t] .. off[t] + batch_sizes[t] of every (N, ·) buffer (N = Σ batch_sizes). A
# step's GEMMs and gate loop then run over its active rows only, and the input
# projection, dX and the weight gradients are single GEMMs over the N valid rows: padded
# positions are never computed. The state of row b at step t-1 is at off[t-1] + b (the
# active rows of a step are a prefix of those of the step before), so each step reads
# its previous state as one contiguous block. With all batch sizes equal to B it is the
# padded layout of forward/backward.
#
# reverse: the direction that runs from each row's own last step down to step 0. At step
# t, rows 0 .. batch_sizes[t+1] continue from step t+1, and rows batch_sizes[t+1] ..
# batch_sizes[t] (those whose last step is t) start there from h0/c0.

cdef inline bint batch_sizes_ok(int T, int B, const int* batch_sizes) noexcept nogil:
    """batch_sizes[0] == B, non-increasing, at least 1."""
    cdef int t
    if batch_sizes == NULL or T <= 0 or B <= 0 or batch_sizes[0] != B:
        return False
    for t in range(1, T):
        if batch_sizes[t] < 1 or batch_sizes[t] > batch_sizes[t - 1]:
            return False
    return True


cdef Py_ssize_t packed_rows(int T, const int* batch_sizes) noexcept nogil:
    cdef Py_ssize_t n = 0
    cdef int t
    for t in range(T):
        n += batch_sizes[t]
    return n


cdef struct packed_plan:
    Py_ssize_t* off      # (T + 1) first row of each step; off[T] = N
    int* lengths         # (B) each row's number of steps
    int* bounds          # (threads + 1) the rows of each thread
    int chunks


cdef void plan_free(packed_plan* plan) noexcept nogil:
    free(plan.off)
    free(plan.lengths)
    free(plan.bounds)


cdef int plan_make(packed_plan* plan, int T, int B, const int* batch_sizes,
                   int n_chunks) noexcept nogil:
    """Step offsets, row lengths and a split of the rows into n_chunks contiguous slices
    of about equal work (valid steps, not rows: the first rows are the longest).
    Returns -2 when out of memory."""
    cdef int t, b, c
    cdef Py_ssize_t total, acc, target
    plan.off = <Py_ssize_t*>malloc((T + 1) * sizeof(Py_ssize_t))
    plan.lengths = <int*>malloc(B * sizeof(int))
    plan.bounds = <int*>malloc((n_chunks + 1) * sizeof(int))
    plan.chunks = n_chunks
    if plan.off == NULL or plan.lengths == NULL or plan.bounds == NULL:
        plan_free(plan)
        plan.off = NULL
        plan.lengths = NULL
        plan.bounds = NULL
        return -2
    plan.off[0] = 0
    for t in range(T):
        plan.off[t + 1] = plan.off[t] + batch_sizes[t]
    t = T
    for b in range(B):
        while t > 0 and batch_sizes[t - 1] <= b:
            t -= 1
        plan.lengths[b] = t
    total = plan.off[T]
    plan.bounds[0] = 0
    b = 0
    acc = 0
    for c in range(1, n_chunks):
        target = total * c // n_chunks
        while b < B and acc < target:
            acc += plan.lengths[b]
            b += 1
        plan.bounds[c] = b
    plan.bounds[n_chunks] = B
    return 0


cdef int plan_team(packed_plan* plan, int* num_threads, int* n_units, int T, int B,
                   int H, Py_ssize_t N, const int* batch_sizes, bint units_allowed,
                   int elem_size) noexcept nogil:
    """How the packed drivers of every cell, forward and backward, split their team:
    num_threads[0] becomes the team's size; the rows are cut into chunks by
    thread_count's rule on the recurrent work of the N rows (as for T·B) and planned
    (plan_make); n_units[0] is the threads of the hidden-unit split when the rows cannot
    occupy the team (1: none), only where ``units_allowed`` (not with a projection,
    whose y_t = h_t·W_hrᵀ would need every unit of h_t: a second barrier per step).
    Returns 0, or -2 when out of memory (nothing left allocated)."""
    num_threads[0] = clstm_team_threads(num_threads[0])
    cdef int n_chunks = thread_count(num_threads[0], <int>((N + B - 1) // B), B, H)
    n_units[0] = (unit_split_threads(num_threads[0], n_chunks, B, H, elem_size)
                  if packed_steps(B) and N > B and units_allowed else 1)
    return plan_make(plan, T, B, batch_sizes, n_chunks)


# The packed walk of a slice of rows b0:b1, the same for every cell and pass: each
# iteration's step and active rows, the rows that continue from the step before (reverse),
# the final states. The cell's step (gate math and products) is what the walks plug in.

cdef inline int step_rows(int it, int T, bint descending, const int* bs, int b0, int b1,
                          int* t, int* r1, clstm_call* call) noexcept nogil:
    """Iteration ``it`` of a walk through steps T-1 .. 0 (``descending``: the reverse
    forward, the backward of the forward direction) or 0 .. T-1: 1 to run rows
    b0 : r1[0] of step t[0]; 0 to skip it (descending: the slice's rows start later); -1
    to end the walk (the call was stopped, or ascending past the slice's last step)."""
    if clstm_call_stopped(call):
        return -1
    t[0] = T - 1 - it if descending else it
    if bs[t[0]] <= b0:
        return 0 if descending else -1
    r1[0] = b1 if b1 < bs[t[0]] else bs[t[0]]
    return 1


cdef inline int rows_continuing(int t, int T, const int* bs, int b0, int r1) noexcept nogil:
    """In the reverse direction, the end m of rows b0:m of step t that continue from step
    t+1 (rows m:r1 start at step t, from the initial state)."""
    cdef int nxt = bs[t + 1] if t + 1 < T else 0
    return b0 if nxt < b0 else (r1 if nxt > r1 else nxt)


cdef inline void save_final_rows(bint reverse, int t, int T, const int* bs,
                                 const Py_ssize_t* off, int b0, int b1, int r1, int width,
                                 const floating* states, floating* final) noexcept nogil:
    """The rows of b0:r1 whose last step is t: their states (``width`` wide, packed) into
    ``final`` (B × width): forward, the rows that step t+1 does not have; reverse, every
    row at step 0."""
    cdef int b, nxt
    if not reverse:
        nxt = bs[t + 1] if t + 1 < T else 0
        for b in range(nxt if nxt > b0 else b0, r1):
            memcpy(final + <Py_ssize_t>b * width, states + (off[t] + b) * width,
                   width * sizeof(floating))
    elif t == 0:
        memcpy(final + <Py_ssize_t>b0 * width, states + (off[t] + b0) * width,
               <size_t>(b1 - b0) * width * sizeof(floating))


cdef inline int forward_iter_packed(int it, int T, int B, int I, int H, int P, const int* bs,
                                    const Py_ssize_t* off, bint reverse, int b0, int b1,
                                    const floating* x, const floating* w_ih_packed,
                                    const floating* w_hh, const floating* w_hh_packed,
                                    const floating* w_hr, const floating* w_hr_packed,
                                    const floating* bias, const floating* peephole,
                                    const floating* h0, const floating* c0, floating* y,
                                    floating* gates, floating* cells, floating* hidden,
                                    floating* h_n, floating* c_n,
                                    clstm_call* call) noexcept nogil:
    """Iteration ``it`` of the walk of rows b0:b1 (forward_rows_packed): 1 when it ran a
    step, 0 when the slice has no rows in it, -1 when the walk has ended (see step_rows).
    The row split's blocks (forward_blocks_packed) run the iterations one at a time."""
    cdef int t, r1, m, walk
    cdef int G = 4 * H
    cdef Py_ssize_t row0, prev0
    if b1 <= b0:
        return -1
    walk = step_rows(it, T, reverse, bs, b0, b1, &t, &r1, call)
    if walk <= 0:
        return walk
    row0 = off[t] + b0
    if w_ih_packed != NULL:
        weights_gemm(r1 - b0, G, I, x + row0 * I, I, w_ih_packed, NULL, True,
                     <floating>0, gates + row0 * G, G)
    if not reverse:
        if t > 0:
            prev0 = off[t - 1] + b0
            weights_gemm(r1 - b0, G, P, y + prev0 * P, P, w_hh_packed, w_hh, True,
                         <floating>1, gates + row0 * G, G)
            gates_forward(r1 - b0, H, gates + row0 * G, bias, peephole,
                          cells + prev0 * H, cells + row0 * H, hidden + row0 * H)
        else:
            if h0 != NULL:
                weights_gemm(r1 - b0, G, P, h0 + <Py_ssize_t>b0 * P, P, w_hh_packed,
                             w_hh, True, <floating>1, gates + row0 * G, G)
            gates_forward(r1 - b0, H, gates + row0 * G, bias, peephole,
                          c0 + <Py_ssize_t>b0 * H if c0 != NULL else NULL,
                          cells + row0 * H, hidden + row0 * H)
    else:
        m = rows_continuing(t, T, bs, b0, r1)
        if m > b0:                   # rows b0:m continue from step t+1
            prev0 = off[t + 1] + b0
            weights_gemm(m - b0, G, P, y + prev0 * P, P, w_hh_packed, w_hh, True,
                         <floating>1, gates + row0 * G, G)
            gates_forward(m - b0, H, gates + row0 * G, bias, peephole,
                          cells + prev0 * H, cells + row0 * H, hidden + row0 * H)
        if r1 > m:                   # rows m:r1 start here, from h0/c0
            if h0 != NULL:
                weights_gemm(r1 - m, G, P, h0 + <Py_ssize_t>m * P, P, w_hh_packed,
                             w_hh, True, <floating>1, gates + (off[t] + m) * G, G)
            gates_forward(r1 - m, H, gates + (off[t] + m) * G, bias, peephole,
                          c0 + <Py_ssize_t>m * H if c0 != NULL else NULL,
                          cells + (off[t] + m) * H, hidden + (off[t] + m) * H)
    if w_hr != NULL:                 # LSTMP: y_t = h_t · W_hrᵀ
        weights_gemm(r1 - b0, P, H, hidden + row0 * H, H, w_hr_packed, w_hr, True,
                     <floating>0, y + row0 * P, P)
    if h_n != NULL:
        save_final_rows(reverse, t, T, bs, off, b0, b1, r1, P, y, h_n)
        save_final_rows(reverse, t, T, bs, off, b0, b1, r1, H, cells, c_n)
    return 1


cdef void forward_rows_packed(int T, int B, int I, int H, int P, const int* bs,
                              const Py_ssize_t* off, bint reverse, int b0, int b1, int it0,
                              const floating* x, const floating* w_ih_packed,
                              const floating* w_hh, const floating* w_hh_packed,
                              const floating* w_hr, const floating* w_hr_packed,
                              const floating* bias, const floating* peephole,
                              const floating* h0, const floating* c0, floating* y,
                              floating* gates, floating* cells, floating* hidden,
                              floating* h_n, floating* c_n, clstm_call* call) noexcept nogil:
    """Rows b0:b1 through their valid steps, in the packed layout (see above); h_n, c_n
    (may be NULL) receive each row's state after its last step; the walk starts at
    iteration it0 (0: the whole sequence). The recurrent state is
    P wide: h = o ⊙ tanh(c) itself (P = H, w_hr NULL, ``hidden`` is y), or its
    projection y = h·W_hrᵀ (LSTMP: h goes to ``hidden``, N×H)."""
    cdef int it
    for it in range(it0, T):
        if forward_iter_packed(it, T, B, I, H, P, bs, off, reverse, b0, b1, x, w_ih_packed,
                               w_hh, w_hh_packed, w_hr, w_hr_packed, bias, peephole, h0, c0,
                               y, gates, cells, hidden, h_n, c_n, call) < 0:
            return


cdef void forward_blocks_packed(int T, int B, int I, int H, int P, const int* bs,
                                const Py_ssize_t* off, const int* bounds, bint reverse,
                                int n_blocks, clstm_row_block* blocks,
                                clstm_team_clock* clock, const floating* x,
                                const floating* w_ih_packed, const floating* w_hh,
                                const floating* w_hh_packed, const floating* w_hr,
                                const floating* w_hr_packed, const floating* bias,
                                const floating* peephole, const floating* h0,
                                const floating* c0, floating* y, floating* gates,
                                floating* cells, floating* hidden, floating* h_n,
                                floating* c_n, clstm_call* call) noexcept nogil:
    """One thread's part of the packed forward's row split, as forward_blocks: block k is
    the plan's rows bounds[k] : bounds[k+1], its step s iteration s of their walk."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        forward_iter_packed(w.s, T, B, I, H, P, bs, off, reverse, bounds[w.blk],
                            bounds[w.blk + 1], x, w_ih_packed, w_hh, w_hh_packed, w_hr,
                            w_hr_packed, bias, peephole, h0, c0, y, gates, cells, hidden,
                            h_n, c_n, call)
    walk_end(&w, clock)


cdef floating* zero_state_if_needed(const floating* state, int B, int P, int G,
                                    const floating* w_hh, bint* failed) noexcept nogil:
    """zeros_if_needed for a state P wide (W_hh G×P)."""
    cdef void* buf = NULL
    if state != NULL or all_finite(<Py_ssize_t>G * P, w_hh):
        return NULL
    if posix_memalign(&buf, 64, <size_t>B * P * sizeof(floating)) != 0:
        failed[0] = True
        return NULL
    memset(buf, 0, <size_t>B * P * sizeof(floating))
    return <floating*>buf


cdef inline bint proj_ok(int H, int P) noexcept nogil:
    """P = 0 (no projection) or 1 <= P < H."""
    return P == 0 or 0 < P < H


# The hidden-unit split on the packed layout for the LSTM without projection (as the
# padded forward_units / backward_units, and the GRU's below): each thread owns units
# u0:u1 of the four gates for every active row of a step; a barrier per step.

cdef void pack_unit_slices(int n_gates, int I, int H, int u0, int u, Py_ssize_t N,
                           const floating* x, const floating* w_ih, const floating* w_hh,
                           floating* gates, floating** packed, int* failed,
                           clstm_call* call) noexcept nogil:
    """What every cell's unit split does before its time loop (one thread of the team,
    units u0 : u0+u): its slice of each of the n_gates gates of W_hh packed into
    packed[g] (rows g·H+u0 : g·H+u0+u; NULL when u = 0 or out of memory), and its gate
    columns of the input projection x·W_ihᵀ for all N rows written into ``gates``
    (n_gates·H wide). Any failure to pack sets failed[0], which every thread sees after
    the barrier this ends with."""
    cdef int g
    cdef int G = n_gates * H
    cdef Py_ssize_t gate0
    cdef floating* packed_ih
    for g in range(n_gates):
        packed[g] = NULL
        if u > 0:
            gate0 = <Py_ssize_t>g * H + u0
            packed_ih = pack_weights(I, u, w_ih + gate0 * I, I, True)
            packed[g] = pack_weights(H, u, w_hh + gate0 * H, H, True)
            if packed_ih == NULL or packed[g] == NULL:
                failed[0] = 1
            else:
                packed_gemm_blocked(<int>N, I, u, x, I, packed_ih, gates + gate0, G, False,
                                    call)
            free(packed_ih)
    clstm_omp_barrier()                      # every thread sees any failure to pack


cdef floating* pack_unit_columns(int G, int H, int u0, int u, const floating* w_hh,
                                 int* failed) noexcept nogil:
    """What every cell's backward unit split does before its time loop: W_hh[:, u0:u0+u]
    (G × u) packed for dL/dh_prev's columns of this thread (NULL when u = 0 or out of
    memory, then failed[0] set); ends with the barrier after which every thread sees
    any failure."""
    cdef floating* packed = NULL
    if u > 0:
        packed = pack_weights(G, u, w_hh + u0, H, False)
        if packed == NULL:
            failed[0] = 1
    clstm_omp_barrier()
    return packed


cdef void forward_units_packed(int T, int B, int I, int H, const int* bs,
                               const Py_ssize_t* off, bint reverse, const floating* x,
                               const floating* w_ih, const floating* w_hh,
                               const floating* bias, const floating* peephole,
                               const floating* h0, const floating* c0, floating* y,
                               floating* gates, floating* cells, int* failed,
                               int* leave_step, clstm_call* call) noexcept nogil:
    """One thread's share of an LSTM direction's packed forward split by hidden units
    (forward_units' scheme on the packed walk); the team leaves together at iteration
    leave_step[0] when late."""
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, g, it, t, rows, nxt, part, r0, r1
    cdef int G = 4 * H
    cdef Py_ssize_t row0, prev0
    cdef floating* packed[4]
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef team_pace pace
    pack_unit_slices(4, I, H, u0, u, off[T], x, w_ih, w_hh, gates, packed, failed, call)
    pace_start(&pace)
    if failed[0] == 0:
        for it in range(T):
            if team_leaves(it, leave_step, &pace, call):
                break
            t = T - 1 - it if reverse else it
            rows = bs[t]
            nxt = bs[t + 1] if reverse and t + 1 < T else 0
            # forward: one part, rows 0:rows; reverse: rows 0:nxt continue from step t+1,
            # rows nxt:rows start here from h0/c0
            for part in range(2 if reverse else 1):
                r0 = nxt if part == 1 else 0
                r1 = nxt if (reverse and part == 0) else rows
                if r1 <= r0 or u <= 0:
                    continue
                row0 = off[t] + r0
                if (not reverse and t > 0) or (reverse and part == 0):
                    prev0 = off[t + 1] if reverse else off[t - 1]
                    h_prev = y + prev0 * H
                    c_prev = cells + prev0 * H
                else:
                    h_prev = h0 + <Py_ssize_t>r0 * H if h0 != NULL else NULL
                    c_prev = c0 + <Py_ssize_t>r0 * H if c0 != NULL else NULL
                if h_prev != NULL:
                    for g in range(4):
                        weights_gemm(r1 - r0, u, H, h_prev, H, packed[g], NULL, True,
                                     <floating>1, gates + row0 * G + <Py_ssize_t>g * H + u0,
                                     G)
                gates_forward_units(r1 - r0, H, u0, u1, gates + row0 * G, bias, peephole,
                                    c_prev, cells + row0 * H, y + row0 * H)
            clstm_omp_barrier()              # h_t complete before any thread reads it
    for g in range(4):
        free(packed[g])


cdef void backward_units_packed(int T, int B, int H, const int* bs, const Py_ssize_t* off,
                                bint reverse, const floating* w_hh,
                                const floating* peephole, const floating* c0,
                                floating* gates, const floating* cells, floating* dy,
                                floating* dh0, floating* dc, int* failed, int* leave_step,
                                clstm_call* call) noexcept nogil:
    """One thread's share of an LSTM direction's packed backward time loop split by
    hidden units (backward_units' scheme on the packed walk): its units' gates into da
    and their dc, a barrier, then its columns of da · W_hh[:, u0:u1] into dL/dh_prev,
    which only it reads at the next step."""
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, it, t, rows, nxt, part, r0, r1
    cdef int G = 4 * H
    cdef Py_ssize_t row0, prev0
    cdef bint from_state
    cdef const floating* c_prev
    cdef team_pace pace
    cdef floating* packed = pack_unit_columns(G, H, u0, u, w_hh, failed)
    pace_start(&pace)
    if failed[0] == 0:
        for it in range(T):
            if team_leaves(it, leave_step, &pace, call):
                break
            t = it if reverse else T - 1 - it
            rows = bs[t]
            nxt = bs[t + 1] if reverse and t + 1 < T else 0
            if u > 0:
                for part in range(2 if reverse else 1):
                    r0 = nxt if part == 1 else 0
                    r1 = nxt if (reverse and part == 0) else rows
                    if r1 <= r0:
                        continue
                    row0 = off[t] + r0
                    from_state = not ((not reverse and t > 0) or (reverse and part == 0))
                    if not from_state:
                        c_prev = cells + (off[t + 1] if reverse else off[t - 1]) * H
                    else:
                        c_prev = c0 + <Py_ssize_t>r0 * H if c0 != NULL else NULL
                    gates_backward_units(r1 - r0, H, u0, u1, gates + row0 * G, peephole,
                                         c_prev, cells + row0 * H, dy + row0 * H,
                                         dc + <Py_ssize_t>r0 * H)
            clstm_omp_barrier()              # da_t complete before any thread reads it
            if u > 0:
                for part in range(2 if reverse else 1):
                    r0 = nxt if part == 1 else 0
                    r1 = nxt if (reverse and part == 0) else rows
                    if r1 <= r0:
                        continue
                    row0 = off[t] + r0
                    from_state = not ((not reverse and t > 0) or (reverse and part == 0))
                    if not from_state:
                        prev0 = off[t + 1] if reverse else off[t - 1]
                        weights_gemm(r1 - r0, u, G, gates + row0 * G, G, packed, NULL, False,
                                     <floating>1, dy + prev0 * H + u0, H)
                    else:
                        weights_gemm(r1 - r0, u, G, gates + row0 * G, G, packed, NULL, False,
                                     <floating>0, dh0 + <Py_ssize_t>r0 * H + u0, H)
    free(packed)


cdef void gather_final_states(const packed_plan* plan, int B, int H, bint reverse,
                              const floating* states, floating* final) noexcept nogil:
    """final (B×H): each row's state at its last valid step (forward) or step 0, from
    ``states`` (packed, N×H: the output h of every cell, an LSTM's cells c)."""
    cdef int b
    cdef Py_ssize_t row
    for b in range(B):
        row = (plan.off[0] if reverse else plan.off[plan.lengths[b] - 1]) + b
        memcpy(final + <Py_ssize_t>b * H, states + row * H, H * sizeof(floating))


cdef inline bint step_projection_packed(int n_chunks, Py_ssize_t N, int B, int I, int P,
                                       int G, int elem_size) noexcept nogil:
    """Whether the packed forward computes its input projection step by step inside each
    thread's loop (see packed_products_setup)."""
    return (packed_steps(B // n_chunks) and N > B
            and B // n_chunks >= _min_rows_per_step_projection
            and (<double>I + P) * G * elem_size <= _max_step_weights_bytes)


cdef int packed_products_setup(int num_threads, int n_chunks, Py_ssize_t N, int B, int I,
                               int P, int G, const floating* x, const floating* w_ih,
                               const floating* w_hh, floating* gates, floating** packed_hh,
                               floating** packed_ih, clstm_call* call) noexcept nogil:
    """What the packed forward of every cell (G gate columns, a state P wide) does before
    its time loop, by the ISA level's rule (as in layer_forward): W_hhᵀ packed when the
    per-step products run packed (``packed_hh``, else NULL); the input projection x·W_ihᵀ
    either step by step inside each thread's loop, with a few rows per thread and small
    weights (W_ihᵀ packed into ``packed_ih``), or now, one GEMM over the N valid rows
    into ``gates`` (``packed_ih`` NULL). Returns 0, or -2 when out of memory (nothing
    left allocated)."""
    cdef bint steps_packed = packed_steps(B // n_chunks) and N > B
    cdef bint per_step = step_projection_packed(n_chunks, N, B, I, P, G, sizeof(floating))
    cdef bint ih_packed = per_step or (packed_bulk() and N > B)
    packed_hh[0] = NULL
    packed_ih[0] = NULL
    if steps_packed:
        packed_hh[0] = pack_weights(P, G, w_hh, P, True, num_threads)     # P = W_hhᵀ
    if ih_packed:
        packed_ih[0] = pack_weights(I, G, w_ih, I, True, num_threads)     # P = W_ihᵀ
    if (steps_packed and packed_hh[0] == NULL) or (ih_packed and packed_ih[0] == NULL):
        free(packed_hh[0])
        free(packed_ih[0])
        packed_hh[0] = NULL
        packed_ih[0] = NULL
        return -2
    if not per_step:
        if packed_ih[0] != NULL:
            parallel_packed_gemm(num_threads, <int>N, I, G, x, I, packed_ih[0], gates, G,
                                 False, call)
            free(packed_ih[0])
            packed_ih[0] = NULL
        else:
            parallel_gemm(num_threads, False, True, <int>N, G, I, <floating>1, x, I, w_ih,
                          I, <floating>0, gates, G)
    return 0


cdef int layer_forward_packed(int T, int B, int I, int H, int P, const int* batch_sizes,
                              bint reverse, const floating* x, const floating* w_ih,
                              const floating* w_hh, const floating* w_hr,
                              const floating* bias, const floating* peephole,
                              const floating* h0, const floating* c0, floating* y,
                              floating* h_n, floating* c_n, floating* workspace,
                              int num_threads, clstm_call* call) noexcept nogil:
    """The forward of one direction of a layer over a packed batch, projected to P
    (P = 0: none). Returns 0, -1 for bad sizes, -2 when out of memory, -3 when the call
    was asked to stop."""
    global _units_split_last, _team_left_last
    cdef int chunk, n_chunks
    cdef int G = 4 * H
    if (not sizes_ok(T, B, I, H) or not batch_sizes_ok(T, B, batch_sizes)
            or not proj_ok(H, P) or (P > 0) != (w_hr != NULL)):
        return -1
    if P == 0:
        P = H
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    cdef floating* gates = workspace
    cdef floating* cells = workspace + N * G
    cdef floating* hidden = cells + N * H if w_hr != NULL else y
    cdef floating* packed = NULL
    cdef floating* packed_ih = NULL
    cdef floating* packed_hr = NULL
    cdef packed_plan plan
    cdef bint no_memory = False
    cdef floating* zero_h0 = zero_state_if_needed(h0, B, P, G, w_hh, &no_memory)
    if no_memory:
        return -2
    if zero_h0 != NULL:
        h0 = zero_h0
    cdef int n_units
    cdef int failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_team_clock clock
    if plan_team(&plan, &num_threads, &n_units, T, B, H, N, batch_sizes, w_hr == NULL,
                 sizeof(floating)) != 0:
        _units_split_last = n_units > 1
        free(zero_h0)
        return -2
    _units_split_last = n_units > 1
    n_chunks = plan.chunks
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            forward_units_packed(T, B, I, H, batch_sizes, plan.off, reverse, x, w_ih, w_hh,
                                 bias, peephole, h0, c0, y, gates, cells, &failed,
                                 &leave_step, call)
        # a units split that left is sure evidence: the pause starts at once
        clstm_team_report(2 if leave_step < T and not clstm_call_stopped(call) else 0)
        if not failed and leave_step < T and not clstm_call_stopped(call):
            # The team was late: this thread runs the remaining steps alone, on all
            # units (the gates already hold their input projection).
            _team_left_last = leave_step
            packed = pack_weights(H, G, w_hh, H, True)
            failed = packed == NULL
            if not failed:
                forward_rows_packed(T, B, I, H, P, batch_sizes, plan.off, reverse, 0, B,
                                    leave_step, x, NULL, w_hh, packed, NULL, NULL, bias,
                                    peephole, h0, c0, y, gates, cells, y, NULL, NULL, call)
            free(packed)
        if not failed and h_n != NULL:
            gather_final_states(&plan, B, H, reverse, y, h_n)
            gather_final_states(&plan, B, H, reverse, cells, c_n)
        clstm_blas_leave()
        free(zero_h0)
        plan_free(&plan)
        if failed:
            return -2
        return -3 if clstm_call_stopped(call) else 0
    cdef int status = packed_products_setup(num_threads, n_chunks, N, B, I, P, G, x, w_ih,
                                            w_hh, gates, &packed, &packed_ih, call)
    if status == 0 and packed != NULL and w_hr != NULL:   # W_hrᵀ, packed as W_hh is
        packed_hr = pack_weights(H, P, w_hr, H, True, num_threads)
        if packed_hr == NULL:
            status = -2
    if status != 0:
        free(packed)
        free(packed_ih)
        free(zero_h0)
        plan_free(&plan)
        clstm_blas_leave()
        return -2
    if n_chunks > 1 and _row_handover:
        blocks = new_row_blocks(n_chunks)
        if blocks == NULL:
            failed = 1
        else:
            clstm_team_clock_start(&clock)
            with parallel(num_threads=n_chunks):
                forward_blocks_packed(T, B, I, H, P, batch_sizes, plan.off, plan.bounds,
                                      reverse, n_chunks, blocks, &clock, x, packed_ih, w_hh,
                                      packed, w_hr, packed_hr, bias, peephole, h0, c0, y,
                                      gates, cells, hidden, h_n, c_n, call)
            free(blocks)
            clstm_team_report(clock.late)
    elif n_chunks > 1:
        for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
            forward_rows_packed(T, B, I, H, P, batch_sizes, plan.off, reverse,
                                plan.bounds[chunk], plan.bounds[chunk + 1], 0, x, packed_ih,
                                w_hh, packed, w_hr, packed_hr, bias, peephole, h0, c0, y,
                                gates, cells, hidden, h_n, c_n, call)
    else:
        forward_rows_packed(T, B, I, H, P, batch_sizes, plan.off, reverse, 0, B, 0, x,
                            packed_ih, w_hh, packed, w_hr, packed_hr, bias, peephole, h0,
                            c0, y, gates, cells, hidden, h_n, c_n, call)
    clstm_blas_leave()
    free(packed_ih)
    free(packed)
    free(packed_hr)
    free(zero_h0)
    plan_free(&plan)
    if failed:
        return -2
    return -3 if clstm_call_stopped(call) else 0


# What the packed backward of every cell shares (the LSTM's below, the GRU's after it).

cdef void add_final_state_grads(const packed_plan* plan, int B, int P, bint reverse,
                                floating* dy, const floating* dh_n) noexcept nogil:
    """dL/dh_n into dL/dy at each row's final step (its last valid step forward, step 0
    reverse); dh_n may be NULL."""
    cdef int b, k
    cdef Py_ssize_t row
    if dh_n == NULL:
        return
    for b in range(B):
        row = (plan.off[0] if reverse else plan.off[plan.lengths[b] - 1]) + b
        for k in range(P):
            dy[row * P + k] += dh_n[<Py_ssize_t>b * P + k]


cdef void input_gradient(int num_threads, int N, int G, int I, const floating* da,
                         const floating* w_ih, floating* dx, clstm_call* call) noexcept nogil:
    """dX (N×I) = da (N×G) · W_ih (G×I): packed or BLAS by the level's rule for
    whole-sequence products (a failed pack falls back to BLAS)."""
    cdef floating* packed_ih = NULL
    if packed_bulk():
        packed_ih = pack_weights(G, I, w_ih, I, False, num_threads)  # P = W_ih
    if packed_ih != NULL:
        parallel_packed_gemm(num_threads, N, G, I, da, G, packed_ih, dx, I, False, call)
        free(packed_ih)
    else:
        parallel_gemm(num_threads, False, False, N, I, G, <floating>1, da, G, w_ih, I,
                      <floating>0, dx, I)


cdef int recurrent_weight_gradient(int num_threads, int G, int T, int B, int P,
                                   const int* batch_sizes, const Py_ssize_t* off,
                                   bint reverse, const floating* da, const floating* y,
                                   const floating* h0, floating* dw_hh,
                                   clstm_call* call) noexcept nogil:
    """dW_hh (G×P) += daᵀ · H_prev, over the N packed rows of da (N×G): H_prev is the state
    each row read at its step, gathered into the packed layout (step t's rows read a
    prefix of another step's rows of y, or h0; NULL h0: zeros). Forward, the rows of step
    0 read h0 itself, so only the other N - B rows are gathered. Returns -2 when out of
    memory."""
    cdef int t, nxt
    cdef int status = 0
    cdef Py_ssize_t N = off[T], row
    cdef void* buf = NULL
    cdef floating* h_prev
    if not reverse and h0 != NULL:
        status |= weight_gradient(num_threads, G, B, P, da, h0, P, dw_hh, call)
    if N <= B and not reverse:
        return status
    if posix_memalign(&buf, 64, <size_t>N * P * sizeof(floating)) != 0:
        return -2
    h_prev = <floating*>buf
    for t in range(T):
        row = off[t] * P
        if not reverse:
            if t > 0:
                memcpy(h_prev + row, y + off[t - 1] * P,
                       <size_t>batch_sizes[t] * P * sizeof(floating))
        else:
            nxt = batch_sizes[t + 1] if t + 1 < T else 0
            if nxt > 0:
                memcpy(h_prev + row, y + off[t + 1] * P, <size_t>nxt * P * sizeof(floating))
            if h0 != NULL:
                memcpy(h_prev + row + <Py_ssize_t>nxt * P, h0 + <Py_ssize_t>nxt * P,
                       <size_t>(batch_sizes[t] - nxt) * P * sizeof(floating))
            else:
                memset(h_prev + row + <Py_ssize_t>nxt * P, 0,
                       <size_t>(batch_sizes[t] - nxt) * P * sizeof(floating))
    if reverse:
        status |= weight_gradient(num_threads, G, <int>N, P, da, h_prev, P, dw_hh, call)
    else:
        status |= weight_gradient(num_threads, G, <int>(N - B), P, da + <Py_ssize_t>B * G,
                                  h_prev + <Py_ssize_t>B * P, P, dw_hh, call)
    free(h_prev)
    return status


cdef inline int backward_iter_packed(int it, int T, int B, int H, int P, const int* bs,
                                     const Py_ssize_t* off, bint reverse, int b0, int b1,
                                     const floating* w_hh, const floating* w_hh_packed,
                                     const floating* w_hr, const floating* w_hr_packed,
                                     const floating* peephole, const floating* c0,
                                     floating* gates, const floating* cells, floating* dy,
                                     floating* dhidden, floating* dh0, floating* dc,
                                     clstm_call* call) noexcept nogil:
    """Iteration ``it`` of the backward walk of rows b0:b1 (backward_rows_packed), as
    forward_iter_packed: 1 ran, 0 nothing here, -1 the walk has ended."""
    cdef int t, r1, m, walk
    cdef int G = 4 * H
    cdef Py_ssize_t row0, prev0
    cdef floating* dh
    if b1 <= b0:
        return -1
    walk = step_rows(it, T, not reverse, bs, b0, b1, &t, &r1, call)
    if walk <= 0:
        return walk
    row0 = off[t] + b0
    if w_hr != NULL:                 # dL/dh_t = dL/dy_t · W_hr
        dh = dhidden + <Py_ssize_t>b0 * H
        weights_gemm(r1 - b0, H, P, dy + row0 * P, P, w_hr_packed, w_hr, False,
                     <floating>0, dh, H)
    else:
        dh = dy + row0 * H
    if not reverse:
        if t > 0:
            prev0 = off[t - 1] + b0
            gates_backward(r1 - b0, H, gates + row0 * G, peephole, cells + prev0 * H,
                           cells + row0 * H, dh, dc + <Py_ssize_t>b0 * H)
            weights_gemm(r1 - b0, P, G, gates + row0 * G, G, w_hh_packed, w_hh, False,
                         <floating>1, dy + prev0 * P, P)
        else:
            gates_backward(r1 - b0, H, gates + row0 * G, peephole,
                           c0 + <Py_ssize_t>b0 * H if c0 != NULL else NULL,
                           cells + row0 * H, dh, dc + <Py_ssize_t>b0 * H)
            weights_gemm(r1 - b0, P, G, gates + row0 * G, G, w_hh_packed, w_hh, False,
                         <floating>0, dh0 + <Py_ssize_t>b0 * P, P)
    else:
        m = rows_continuing(t, T, bs, b0, r1)
        if m > b0:
            prev0 = off[t + 1] + b0
            gates_backward(m - b0, H, gates + row0 * G, peephole, cells + prev0 * H,
                           cells + row0 * H, dh, dc + <Py_ssize_t>b0 * H)
            weights_gemm(m - b0, P, G, gates + row0 * G, G, w_hh_packed, w_hh, False,
                         <floating>1, dy + prev0 * P, P)
        if r1 > m:
            gates_backward(r1 - m, H, gates + (off[t] + m) * G, peephole,
                           c0 + <Py_ssize_t>m * H if c0 != NULL else NULL,
                           cells + (off[t] + m) * H, dh + <Py_ssize_t>(m - b0) * H,
                           dc + <Py_ssize_t>m * H)
            weights_gemm(r1 - m, P, G, gates + (off[t] + m) * G, G, w_hh_packed, w_hh,
                         False, <floating>0, dh0 + <Py_ssize_t>m * P, P)
    return 1


cdef void backward_rows_packed(int T, int B, int H, int P, const int* bs,
                               const Py_ssize_t* off, bint reverse, int b0, int b1, int it0,
                               const floating* w_hh, const floating* w_hh_packed,
                               const floating* w_hr, const floating* w_hr_packed,
                               const floating* peephole, const floating* c0,
                               floating* gates, const floating* cells, floating* dy,
                               floating* dhidden, floating* dh0, floating* dc,
                               clstm_call* call) noexcept nogil:
    """Rows b0:b1 back through their valid steps (the forward's order reversed), from
    iteration it0 on. dy
    (packed, P wide) receives each step's recurrent gradient before the step it belongs
    to reads it; dc (B×H) carries dL/dc of each row; dh0 receives dL/dh0 of each row at
    the step that read h0. With a projection, dL/dh = dy·W_hr goes through ``dhidden``
    (B×H scratch, rows b0:b1 this thread's)."""
    cdef int it
    for it in range(it0, T):
        if backward_iter_packed(it, T, B, H, P, bs, off, reverse, b0, b1, w_hh, w_hh_packed,
                                w_hr, w_hr_packed, peephole, c0, gates, cells, dy, dhidden,
                                dh0, dc, call) < 0:
            return


cdef void backward_blocks_packed(int T, int B, int H, int P, const int* bs,
                                 const Py_ssize_t* off, const int* bounds, bint reverse,
                                 int n_blocks, clstm_row_block* blocks,
                                 clstm_team_clock* clock, const floating* w_hh,
                                 const floating* w_hh_packed, const floating* w_hr,
                                 const floating* w_hr_packed, const floating* peephole,
                                 const floating* c0, floating* gates, const floating* cells,
                                 floating* dy, floating* dhidden, floating* dh0, floating* dc,
                                 clstm_call* call) noexcept nogil:
    """One thread's part of the packed backward's row split, as forward_blocks_packed."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        backward_iter_packed(w.s, T, B, H, P, bs, off, reverse, bounds[w.blk],
                             bounds[w.blk + 1], w_hh, w_hh_packed, w_hr, w_hr_packed,
                             peephole, c0, gates, cells, dy, dhidden, dh0, dc, call)
    walk_end(&w, clock)


cdef inline void peephole_grads(int T, int B, int H, const floating* da,
                                const floating* cells, const floating* c0,
                                floating* dpeep) noexcept nogil:
    if floating is float:
        clstm_peephole_grads_f32(T, B, H, da, cells, c0, dpeep)
    else:
        clstm_peephole_grads_f64(T, B, H, da, cells, c0, dpeep)


cdef int layer_backward_packed(int T, int B, int I, int H, int P, const int* batch_sizes,
                               bint reverse, const floating* x, const floating* w_ih,
                               const floating* w_hh, const floating* w_hr,
                               const floating* peephole, const floating* h0,
                               const floating* c0, const floating* y, floating* workspace,
                               floating* dy, const floating* dh_n, const floating* dc_n,
                               floating* dx, floating* dh0, floating* dc0, floating* dw_ih,
                               floating* dw_hh, floating* dw_hr, floating* dbias,
                               floating* dpeephole, int num_threads,
                               clstm_call* call) noexcept nogil:
    """The backward of one direction of a layer over a packed batch, after
    layer_forward_packed with the same arguments. Returns as layer_backward."""
    global _team_left_last
    cdef int chunk, n_chunks, t, nxt
    cdef int G = 4 * H
    cdef Py_ssize_t row
    if (not sizes_ok(T, B, I, H) or not batch_sizes_ok(T, B, batch_sizes)
            or not proj_ok(H, P) or (P > 0) != (w_hr != NULL)
            or (w_hr != NULL and dw_hr == NULL)):
        return -1
    if P == 0:
        P = H
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    cdef floating* gates = workspace
    cdef floating* cells = workspace + N * G
    cdef floating* hidden = cells + N * H if w_hr != NULL else NULL
    cdef packed_plan plan
    cdef int n_units                     # as the forward: units when rows cannot
    if plan_team(&plan, &num_threads, &n_units, T, B, H, N, batch_sizes, w_hr == NULL,
                 sizeof(floating)) != 0:
        return -2
    n_chunks = plan.chunks
    add_final_state_grads(&plan, B, P, reverse, dy, dh_n)
    if dc_n != NULL:
        memcpy(dc0, dc_n, <size_t>B * H * sizeof(floating))
    else:
        memset(dc0, 0, <size_t>B * H * sizeof(floating))

    cdef floating* packed = NULL
    cdef floating* packed_hr = NULL
    cdef floating* dhidden = NULL
    cdef void* buf = NULL
    cdef int failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_team_clock clock
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            backward_units_packed(T, B, H, batch_sizes, plan.off, reverse, w_hh, peephole, c0,
                                  gates, cells, dy, dh0, dc0, &failed, &leave_step, call)
        clstm_team_report(2 if leave_step < T and not clstm_call_stopped(call) else 0)
        if not failed and leave_step < T and not clstm_call_stopped(call):
            _team_left_last = leave_step     # late: the remaining steps on this thread
            packed = pack_weights(G, H, w_hh, H, False)              # P = W_hh
            failed = packed == NULL
            if not failed:
                backward_rows_packed(T, B, H, P, batch_sizes, plan.off, reverse, 0, B,
                                     leave_step, w_hh, packed, NULL, NULL, peephole, c0,
                                     gates, cells, dy, NULL, dh0, dc0, call)
    else:
        if w_hr != NULL:
            failed = posix_memalign(&buf, 64, <size_t>B * H * sizeof(floating)) != 0
            dhidden = <floating*>buf
        if not failed and packed_steps(B // n_chunks) and N > B:
            packed = pack_weights(G, P, w_hh, P, False, num_threads)   # P = W_hh
            failed = packed == NULL
            if w_hr != NULL and not failed:
                packed_hr = pack_weights(P, H, w_hr, H, False, num_threads)   # W_hr
                failed = packed_hr == NULL
        if not failed and n_chunks > 1 and _row_handover:
            blocks = new_row_blocks(n_chunks)
            failed = blocks == NULL
            if not failed:
                clstm_team_clock_start(&clock)
                with parallel(num_threads=n_chunks):
                    backward_blocks_packed(T, B, H, P, batch_sizes, plan.off, plan.bounds,
                                           reverse, n_chunks, blocks, &clock, w_hh, packed,
                                           w_hr, packed_hr, peephole, c0, gates, cells, dy,
                                           dhidden, dh0, dc0, call)
                free(blocks)
                clstm_team_report(clock.late)
        elif not failed and n_chunks > 1:
            for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
                backward_rows_packed(T, B, H, P, batch_sizes, plan.off, reverse,
                                     plan.bounds[chunk], plan.bounds[chunk + 1], 0, w_hh,
                                     packed, w_hr, packed_hr, peephole, c0, gates, cells, dy,
                                     dhidden, dh0, dc0, call)
        elif not failed:
            backward_rows_packed(T, B, H, P, batch_sizes, plan.off, reverse, 0, B, 0, w_hh,
                                 packed, w_hr, packed_hr, peephole, c0, gates, cells, dy,
                                 dhidden, dh0, dc0, call)
    free(packed)
    free(packed_hr)
    free(dhidden)
    if failed or clstm_call_stopped(call):
        clstm_blas_leave()
        plan_free(&plan)
        return -2 if failed else -3

    # The gates buffer now holds da for the N valid rows, dy the whole dL/dy: the rest
    # is a few large GEMMs.
    cdef floating* da = gates
    cdef int status = 0
    if dx != NULL:      # dX = da · W_ih
        input_gradient(num_threads, <int>N, G, I, da, w_ih, dx, call)
    # dW_ih += daᵀ · X
    status |= weight_gradient(num_threads, G, <int>N, I, da, x, I, dw_ih, call)
    # dW_hr += dYᵀ · Hidden (LSTMP)
    if w_hr != NULL:
        status |= weight_gradient(num_threads, P, <int>N, H, dy, hidden, H, dw_hr, call)
    # dW_hh += daᵀ · H_prev
    status |= recurrent_weight_gradient(num_threads, G, T, B, P, batch_sizes, plan.off,
                                        reverse, da, y, h0, dw_hh, call)
    clstm_blas_leave()
    if status != 0:
        plan_free(&plan)
        return -2
    if clstm_call_stopped(call):
        plan_free(&plan)
        return -3
    parallel_column_sums(num_threads, N, G, da, dbias)
    if peephole != NULL and dpeephole != NULL:
        for t in range(T):
            row = plan.off[t]
            if not reverse:
                peephole_grads(1, batch_sizes[t], H, da + row * G, cells + row * H,
                               (cells + plan.off[t - 1] * H) if t > 0 else c0, dpeephole)
            else:
                nxt = batch_sizes[t + 1] if t + 1 < T else 0
                if nxt > 0:
                    peephole_grads(1, nxt, H, da + row * G, cells + row * H,
                                   cells + plan.off[t + 1] * H, dpeephole)
                peephole_grads(1, batch_sizes[t] - nxt, H, da + (row + nxt) * G,
                               cells + (row + nxt) * H,
                               c0 + <Py_ssize_t>nxt * H if c0 != NULL else NULL, dpeephole)
    plan_free(&plan)
    return 0


# The two directions of a bidirectional layer are independent: with 2 threads (or more
# threads than the rows can use) each runs on a thread of its own, its whole batch on one
# thread, instead of one after the other with the rows split; no barrier between them.
# Switchable for A/B measurements and tests (False: one after the other).
cdef bint _parallel_directions = True


def _set_parallel_directions(bint enabled):
    """Run the two directions of a bidirectional layer at once, one per thread (True),
    or one after the other (False); returns the previous setting."""
    global _parallel_directions
    old = _parallel_directions
    _parallel_directions = enabled
    return old


cdef inline bint directions_in_parallel(int num_threads, int B, int H, int P,
                                        Py_ssize_t N) noexcept nogil:
    """Whether the two directions run at once, a thread each: with 2 threads, or with
    fewer than 2 rows per thread, and when one direction's recurrent work is worth a
    thread (as thread_count's rule)."""
    if not _parallel_directions or num_threads < 2:
        return False
    if _min_flops_per_thread > 0 and 8.0 * N * H * P < _min_flops_per_thread:
        return False
    return num_threads == 2 or B < 2 * num_threads


cdef inline bint directions_at_once(int* num_threads, int T, int B, int H, int P,
                                    const int* bs) noexcept nogil:
    """The bidirectional drivers' choice, the same for every cell (P: the state's width):
    True to run the two directions at once, a thread each; else ``num_threads[0]``
    becomes the team that each direction gets in turn."""
    cdef Py_ssize_t N = packed_rows(T, bs) if batch_sizes_ok(T, B, bs) else 0
    num_threads[0] = clstm_team_threads(num_threads[0])
    return directions_in_parallel(num_threads[0], B, H, P, N)


cdef inline double direction_begin() noexcept nogil:
    """A thread of the directions-at-once region, before its direction: its CPU time for
    the team's clock (each direction runs on one thread; the region lasts as long as the
    later one, so a descheduled thread makes the call late as in a row split)."""
    cdef double cpu = clstm_thread_cpu()
    late_thread_pause(clstm_omp_thread_num())
    return cpu


cdef inline int first_failure(const int* status) noexcept nogil:
    """The forward direction's status when it failed, else the reverse one's."""
    return status[0] if status[0] != 0 else status[1]


cdef int bidir_forward(int T, int B, int I, int H, int P, const int* bs, const floating* x,
                       const floating** w_ih, const floating** w_hh,
                       const floating** w_hr, const floating** bias,
                       const floating** peephole, const floating** h0,
                       const floating** c0, floating** y, floating** h_n,
                       floating** c_n, floating** workspace, int num_threads,
                       clstm_call* call) noexcept nogil:
    """Both directions of a layer over a packed batch (see layer_forward_packed)."""
    global _threads_used_last
    cdef int st[2]
    cdef int d
    cdef double cpu0
    cdef clstm_team_clock clock
    if directions_at_once(&num_threads, T, B, H, P if P > 0 else H, bs):
        # timed as a row split: a late direction makes the call late
        clstm_team_clock_start(&clock)
        for d in prange(2, num_threads=2, schedule="static"):
            cpu0 = direction_begin()
            st[d] = layer_forward_packed(T, B, I, H, P, bs, d == 1, x, w_ih[d], w_hh[d],
                                         w_hr[d], bias[d], peephole[d], h0[d], c0[d], y[d],
                                         h_n[d], c_n[d], workspace[d], 1, call)
            clstm_team_clock_check(&clock, cpu0)
        clstm_team_report(clock.late)
        _threads_used_last = 2
    else:
        for d in range(2):
            st[d] = layer_forward_packed(T, B, I, H, P, bs, d == 1, x, w_ih[d], w_hh[d],
                                         w_hr[d], bias[d], peephole[d], h0[d], c0[d], y[d],
                                         h_n[d], c_n[d], workspace[d], num_threads, call)
    return first_failure(st)


cdef int bidir_backward(int T, int B, int I, int H, int P, const int* bs, const floating* x,
                        const floating** w_ih, const floating** w_hh,
                        const floating** w_hr, const floating** peephole,
                        const floating** h0, const floating** c0, const floating** y,
                        floating** workspace, floating** dy, const floating** dh_n,
                        const floating** dc_n, floating** dx, floating** dh0,
                        floating** dc0, floating** dw_ih, floating** dw_hh,
                        floating** dw_hr, floating** dbias, floating** dpeephole,
                        int num_threads, clstm_call* call) noexcept nogil:
    """Both directions' backward (see layer_backward_packed); dx[d] is each direction's
    own share of dL/dx."""
    global _threads_used_last
    cdef int st[2]
    cdef int d
    cdef double cpu0
    cdef clstm_team_clock clock
    if directions_at_once(&num_threads, T, B, H, P if P > 0 else H, bs):
        # timed as a row split: a late direction makes the call late
        clstm_team_clock_start(&clock)
        for d in prange(2, num_threads=2, schedule="static"):
            cpu0 = direction_begin()
            st[d] = layer_backward_packed(T, B, I, H, P, bs, d == 1, x, w_ih[d], w_hh[d],
                                          w_hr[d], peephole[d], h0[d], c0[d], y[d],
                                          workspace[d], dy[d], dh_n[d], dc_n[d], dx[d],
                                          dh0[d], dc0[d], dw_ih[d], dw_hh[d], dw_hr[d],
                                          dbias[d], dpeephole[d], 1, call)
            clstm_team_clock_check(&clock, cpu0)
        clstm_team_report(clock.late)
        _threads_used_last = 2
    else:
        for d in range(2):
            st[d] = layer_backward_packed(T, B, I, H, P, bs, d == 1, x, w_ih[d], w_hh[d],
                                          w_hr[d], peephole[d], h0[d], c0[d], y[d],
                                          workspace[d], dy[d], dh_n[d], dc_n[d], dx[d],
                                          dh0[d], dc0[d], dw_ih[d], dw_hh[d], dw_hr[d],
                                          dbias[d], dpeephole[d], num_threads, call)
    return first_failure(st)


# ---------------------------------------------------------------------------------------
# The GRU on the packed driver (torch.nn.GRU; DEVELOPERS.md, "The GRU"). Everything but
# the cell is the LSTM's: plan_make's row split, W_hh packed once per call, the
# packed-vs-BLAS rule, the input projection per step or upfront, the weight-gradient
# GEMMs over the N valid rows, the directions at once, the call's stop and status. What
# differs: the recurrent product gh = h·W_hhᵀ (3H) is kept apart from the input part
# (r multiplies W_hn h + b_hn, bias included), so each step writes it into its own rows
# of a second (N, 3H) block; the workspace is 6·N·H (gates, gh), no cell states.

cdef inline void gru_gates_forward(int rows, int H, floating* gates, floating* gh,
                                   const floating* b_ih, const floating* b_hh,
                                   const floating* h_prev, floating* h) noexcept nogil:
    if floating is float:
        clstm_gru_gates_forward_f32(rows, H, gates, gh, b_ih, b_hh, h_prev, h)
    else:
        clstm_gru_gates_forward_f64(rows, H, gates, gh, b_ih, b_hh, h_prev, h)


cdef inline void gru_gates_backward(int rows, int H, floating* gates, floating* gh,
                                    const floating* h_prev, const floating* dh,
                                    floating* dh_prev, bint accumulate) noexcept nogil:
    if floating is float:
        clstm_gru_gates_backward_f32(rows, H, gates, gh, h_prev, dh, dh_prev, accumulate)
    else:
        clstm_gru_gates_backward_f64(rows, H, gates, gh, h_prev, dh, dh_prev, accumulate)


cdef inline void gru_gates_forward_units(int rows, int H, int u0, int u1, floating* gates,
                                         floating* gh, const floating* b_ih,
                                         const floating* b_hh, const floating* h_prev,
                                         floating* h) noexcept nogil:
    if floating is float:
        clstm_gru_gates_forward_units_f32(rows, H, u0, u1, gates, gh, b_ih, b_hh, h_prev, h)
    else:
        clstm_gru_gates_forward_units_f64(rows, H, u0, u1, gates, gh, b_ih, b_hh, h_prev, h)


cdef inline void gru_gates_backward_units(int rows, int H, int u0, int u1, floating* gates,
                                          floating* gh, const floating* h_prev,
                                          const floating* dh, floating* dh_prev,
                                          bint accumulate) noexcept nogil:
    if floating is float:
        clstm_gru_gates_backward_units_f32(rows, H, u0, u1, gates, gh, h_prev, dh, dh_prev,
                                           accumulate)
    else:
        clstm_gru_gates_backward_units_f64(rows, H, u0, u1, gates, gh, h_prev, dh, dh_prev,
                                           accumulate)


cdef inline void gru_step_rows(int rows, int H, const floating* prev, const floating* w_hh,
                               const floating* w_hh_packed, const floating* b_ih,
                               const floating* b_hh, floating* gates, floating* gh,
                               floating* h) noexcept nogil:
    """One step of ``rows`` contiguous rows from their previous states (NULL: zeros):
    gh = prev·W_hhᵀ, then the gate loop (gates holds x·W_ihᵀ already)."""
    cdef int G = 3 * H
    if prev != NULL:
        weights_gemm(rows, G, H, prev, H, w_hh_packed, w_hh, True, <floating>0, gh, G)
    else:
        memset(gh, 0, <size_t>rows * G * sizeof(floating))
    gru_gates_forward(rows, H, gates, gh, b_ih, b_hh, prev, h)


cdef inline int gru_forward_iter_packed(int it, int T, int B, int I, int H, const int* bs,
                                        const Py_ssize_t* off, bint reverse, int b0, int b1,
                                        const floating* x, const floating* w_ih_packed,
                                        const floating* w_hh, const floating* w_hh_packed,
                                        const floating* b_ih, const floating* b_hh,
                                        const floating* h0, floating* y, floating* gates,
                                        floating* gh, floating* h_n,
                                        clstm_call* call) noexcept nogil:
    """Iteration ``it`` of the GRU's walk of rows b0:b1 (gru_forward_rows_packed), as
    forward_iter_packed: 1 ran, 0 nothing here, -1 the walk has ended."""
    cdef int t, r1, m, walk
    cdef int G = 3 * H
    cdef Py_ssize_t row0, rowm
    cdef const floating* prev
    if b1 <= b0:
        return -1
    walk = step_rows(it, T, reverse, bs, b0, b1, &t, &r1, call)
    if walk <= 0:
        return walk
    row0 = off[t] + b0
    if w_ih_packed != NULL:
        weights_gemm(r1 - b0, G, I, x + row0 * I, I, w_ih_packed, NULL, True,
                     <floating>0, gates + row0 * G, G)
    if not reverse:
        if t > 0:
            prev = y + (off[t - 1] + b0) * H
        elif h0 != NULL:
            prev = h0 + <Py_ssize_t>b0 * H
        else:
            prev = NULL
        gru_step_rows(r1 - b0, H, prev, w_hh, w_hh_packed, b_ih, b_hh, gates + row0 * G,
                      gh + row0 * G, y + row0 * H)
    else:
        m = rows_continuing(t, T, bs, b0, r1)
        if m > b0:                   # rows b0:m continue from step t+1
            gru_step_rows(m - b0, H, y + (off[t + 1] + b0) * H, w_hh, w_hh_packed, b_ih,
                          b_hh, gates + row0 * G, gh + row0 * G, y + row0 * H)
        if r1 > m:                   # rows m:r1 start here, from h0
            rowm = off[t] + m
            gru_step_rows(r1 - m, H, h0 + <Py_ssize_t>m * H if h0 != NULL else NULL,
                          w_hh, w_hh_packed, b_ih, b_hh, gates + rowm * G, gh + rowm * G,
                          y + rowm * H)
    if h_n != NULL:
        save_final_rows(reverse, t, T, bs, off, b0, b1, r1, H, y, h_n)
    return 1


cdef void gru_forward_rows_packed(int T, int B, int I, int H, const int* bs,
                                  const Py_ssize_t* off, bint reverse, int b0, int b1,
                                  int it0, const floating* x, const floating* w_ih_packed,
                                  const floating* w_hh, const floating* w_hh_packed,
                                  const floating* b_ih, const floating* b_hh,
                                  const floating* h0, floating* y, floating* gates,
                                  floating* gh, floating* h_n,
                                  clstm_call* call) noexcept nogil:
    """Rows b0:b1 through their valid steps (forward_rows_packed's walk), from iteration
    it0 on (0: the whole sequence); h_n (may be NULL) receives each row's state after its
    last step."""
    cdef int it
    for it in range(it0, T):
        if gru_forward_iter_packed(it, T, B, I, H, bs, off, reverse, b0, b1, x, w_ih_packed,
                                   w_hh, w_hh_packed, b_ih, b_hh, h0, y, gates, gh, h_n,
                                   call) < 0:
            return


cdef void gru_forward_blocks_packed(int T, int B, int I, int H, const int* bs,
                                    const Py_ssize_t* off, const int* bounds, bint reverse,
                                    int n_blocks, clstm_row_block* blocks,
                                    clstm_team_clock* clock, const floating* x,
                                    const floating* w_ih_packed, const floating* w_hh,
                                    const floating* w_hh_packed, const floating* b_ih,
                                    const floating* b_hh, const floating* h0, floating* y,
                                    floating* gates, floating* gh, floating* h_n,
                                    clstm_call* call) noexcept nogil:
    """One thread's part of the GRU's packed row split, as forward_blocks_packed."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        gru_forward_iter_packed(w.s, T, B, I, H, bs, off, reverse, bounds[w.blk],
                                bounds[w.blk + 1], x, w_ih_packed, w_hh, w_hh_packed, b_ih,
                                b_hh, h0, y, gates, gh, h_n, call)
    walk_end(&w, clock)


# The hidden-unit split (forward_units / backward_units for the GRU on the packed layout):
# when the rows cannot keep the threads busy (a batch smaller than the team, or at most 2
# rows per thread with a large W_hh: unit_split_threads's rule), each thread owns units
# u0:u1 of the three gates for every active row, and the team meets at a barrier per step.

cdef inline void gru_units_step(int rows, int H, int u0, int u1, const floating* prev,
                                floating** packed, const floating* b_ih,
                                const floating* b_hh, floating* gates, floating* gh,
                                floating* h) noexcept nogil:
    """This thread's units of one step of ``rows`` rows from their previous states
    (NULL: zeros): its columns of gh = prev·W_hhᵀ (three packed slices of W_hh), then
    the gate loop on its units."""
    cdef int g, r
    cdef int G = 3 * H, u = u1 - u0
    if u <= 0:
        return
    for g in range(3):
        if prev != NULL:
            weights_gemm(rows, u, H, prev, H, packed[g], NULL, True, <floating>0,
                         gh + <Py_ssize_t>g * H + u0, G)
        else:
            for r in range(rows):
                memset(gh + <Py_ssize_t>r * G + g * H + u0, 0, u * sizeof(floating))
    gru_gates_forward_units(rows, H, u0, u1, gates, gh, b_ih, b_hh, prev, h)


cdef void gru_forward_units_packed(int T, int B, int I, int H, const int* bs,
                                   const Py_ssize_t* off, bint reverse, const floating* x,
                                   const floating* w_ih, const floating* w_hh,
                                   const floating* b_ih, const floating* b_hh,
                                   const floating* h0, floating* y, floating* gates,
                                   floating* gh, int* failed, int* leave_step,
                                   clstm_call* call) noexcept nogil:
    """One thread's share of a GRU direction's forward split by hidden units (called
    inside a parallel region by every thread of it), as forward_units: the thread packs
    its three slices of W_ih and W_hh (rows g·H+u0 : g·H+u1), computes its gate columns
    of the input projection for all N rows, then at each step its columns of the
    recurrent product and its units of h for the step's active rows; a barrier per step
    makes h_t whole. The team leaves together at iteration leave_step[0] when late."""
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, g, it, t, rows, nxt
    cdef int G = 3 * H
    cdef Py_ssize_t row0
    cdef floating* packed[3]
    cdef const floating* prev
    cdef team_pace pace
    pack_unit_slices(3, I, H, u0, u, off[T], x, w_ih, w_hh, gates, packed, failed, call)
    pace_start(&pace)
    if failed[0] == 0:
        for it in range(T):
            if team_leaves(it, leave_step, &pace, call):
                break
            t = T - 1 - it if reverse else it
            rows = bs[t]
            row0 = off[t]
            if not reverse:
                if t > 0:
                    prev = y + off[t - 1] * H
                else:
                    prev = h0
                gru_units_step(rows, H, u0, u1, prev, packed, b_ih, b_hh, gates + row0 * G,
                               gh + row0 * G, y + row0 * H)
            else:
                nxt = bs[t + 1] if t + 1 < T else 0
                if nxt > 0:                  # rows 0:nxt continue from step t+1
                    gru_units_step(nxt, H, u0, u1, y + off[t + 1] * H, packed, b_ih, b_hh,
                                   gates + row0 * G, gh + row0 * G, y + row0 * H)
                if rows > nxt:               # rows nxt:rows start here, from h0
                    gru_units_step(rows - nxt, H, u0, u1,
                                   h0 + <Py_ssize_t>nxt * H if h0 != NULL else NULL, packed,
                                   b_ih, b_hh, gates + (row0 + nxt) * G,
                                   gh + (row0 + nxt) * G, y + (row0 + nxt) * H)
            clstm_omp_barrier()              # h_t complete before any thread reads it
    for g in range(3):
        free(packed[g])


cdef void gru_backward_units_packed(int T, int B, int H, const int* bs,
                                    const Py_ssize_t* off, bint reverse,
                                    const floating* w_hh, const floating* h0,
                                    const floating* y, floating* gates, floating* gh,
                                    floating* dy, floating* dh0, int* failed,
                                    int* leave_step, clstm_call* call) noexcept nogil:
    """One thread's share of a GRU direction's backward time loop split by hidden units,
    as backward_units: the thread turns its units of the step's gates into their
    gradients (and puts dh ⊙ z of its units into dL/dh_prev), and after a barrier (dgh of
    all units is needed) adds its columns of dgh · W_hh[:, u0:u1] there; only it reads
    those columns at the next step. The team leaves together at iteration leave_step[0]
    when late."""
    cdef int tid = clstm_omp_thread_num()
    cdef int n = clstm_omp_num_threads()
    cdef int u0 = unit_bound(H, n, tid), u1 = unit_bound(H, n, tid + 1)
    cdef int u = u1 - u0, it, t, rows, nxt
    cdef int G = 3 * H
    cdef Py_ssize_t row0
    cdef team_pace pace
    cdef floating* packed = pack_unit_columns(G, H, u0, u, w_hh, failed)
    pace_start(&pace)
    if failed[0] == 0:
        for it in range(T):
            if team_leaves(it, leave_step, &pace, call):
                break
            t = it if reverse else T - 1 - it
            rows = bs[t]
            row0 = off[t]
            if not reverse:
                if u > 0:
                    if t > 0:
                        gru_gates_backward_units(rows, H, u0, u1, gates + row0 * G,
                                                 gh + row0 * G, y + off[t - 1] * H,
                                                 dy + row0 * H, dy + off[t - 1] * H, True)
                    else:
                        gru_gates_backward_units(rows, H, u0, u1, gates + row0 * G,
                                                 gh + row0 * G, h0, dy + row0 * H, dh0, False)
                clstm_omp_barrier()          # dgh_t complete before any thread reads it
                if u > 0:
                    weights_gemm(rows, u, G, gh + row0 * G, G, packed, NULL, False,
                                 <floating>1, (dy + off[t - 1] * H if t > 0 else dh0) + u0, H)
            else:
                nxt = bs[t + 1] if t + 1 < T else 0
                if u > 0:
                    if nxt > 0:
                        gru_gates_backward_units(nxt, H, u0, u1, gates + row0 * G,
                                                 gh + row0 * G, y + off[t + 1] * H,
                                                 dy + row0 * H, dy + off[t + 1] * H, True)
                    if rows > nxt:
                        gru_gates_backward_units(
                            rows - nxt, H, u0, u1, gates + (row0 + nxt) * G,
                            gh + (row0 + nxt) * G,
                            h0 + <Py_ssize_t>nxt * H if h0 != NULL else NULL,
                            dy + (row0 + nxt) * H, dh0 + <Py_ssize_t>nxt * H, False)
                clstm_omp_barrier()
                if u > 0:
                    if nxt > 0:
                        weights_gemm(nxt, u, G, gh + row0 * G, G, packed, NULL, False,
                                     <floating>1, dy + off[t + 1] * H + u0, H)
                    if rows > nxt:
                        weights_gemm(rows - nxt, u, G, gh + (row0 + nxt) * G, G, packed, NULL,
                                     False, <floating>1, dh0 + <Py_ssize_t>nxt * H + u0, H)
    free(packed)



cdef void gru_forward_overlapped(int T, int B, int I, int H, int K, const int* bs,
                                 const Py_ssize_t* off, clstm_counter* counters,
                                 const floating* x,
                                 const floating* w_ih, const floating* packed_ih,
                                 const floating* w_hh, const floating* w_hh_packed,
                                 const floating* b_ih, const floating* b_hh,
                                 const floating* h0, floating* y, floating* gates,
                                 floating* gh, floating* h_n,
                                 clstm_call* call) noexcept nogil:
    """forward_overlapped for the GRU's forward direction over a padded batch (every
    batch size B, so chunk c is rows c·K·B : (c+1)·K·B of the packed layout): thread 0
    walks the steps (gru_forward_iter_packed, the gates holding x_t·W_ihᵀ), the helper
    projects ahead."""
    cdef double waited = 0
    cdef double start = clstm_monotonic(), cpu0 = clstm_thread_cpu()
    cdef int chunks = (T + K - 1) // K
    cdef int c, it
    cdef bint running = True
    cdef clstm_counter* pair = counters + 1 + chunks
    cdef int me = clstm_omp_thread_num()
    clstm_beside_begin(&pair[2 + me], &pair[3 - me])
    if me == 0:
        for c in range(chunks):
            if not projection_ready(c, T, B, I, 3 * H, K, counters, x, w_ih, packed_ih,
                                    gates, &waited, call):
                break
            for it in range(c * K, (c + 1) * K if (c + 1) * K < T else T):
                if gru_forward_iter_packed(it, T, B, I, H, bs, off, False, 0, B, x,
                                           <const floating*>NULL, w_hh, w_hh_packed, b_ih,
                                           b_hh, h0, y, gates, gh, h_n, call) < 0:
                    running = False
                    break
            if not running:
                break
        caller_done(&counters[1 + chunks], start, cpu0, waited, call)
    else:
        project_ahead(T, B, I, 3 * H, K, counters, x, w_ih, packed_ih, gates, call)


cdef void gru_backward_overlapped(int T, int B, int I, int H, int K, const int* bs,
                                  const Py_ssize_t* off, clstm_counter* counters,
                                  const floating* x,
                                  const floating* w_ih, const floating* packed_ih,
                                  const floating* w_hh, const floating* w_hh_packed,
                                  const floating* h0, const floating* y, floating* gates,
                                  floating* gh, floating* dy, floating* dh0, floating* dx,
                                  floating* dw_ih, floating* dw_hh, floating* db_ih,
                                  floating* db_hh, int* failed,
                                  clstm_call* call) noexcept nogil:
    """backward_overlapped for the GRU's forward direction over a padded batch: thread 0
    walks the steps back (gru_backward_iter_packed, turning gates and gh into dgi and
    dgh), then both take chunks: dX = dgi·W_ih, dW_ih += dgiᵀX with db_ih, dW_hh +=
    dghᵀH_prev with db_hh."""
    cdef double waited = 0
    cdef double start = clstm_monotonic(), cpu0 = clstm_thread_cpu()
    cdef int me = clstm_omp_thread_num()
    cdef int it
    clstm_beside_begin(&counters[6 + me], &counters[7 - me])
    if me == 0:
        for it in range(T):
            if gru_backward_iter_packed(it, T, B, H, bs, off, False, 0, B, w_hh, w_hh_packed,
                                        h0, y, gates, gh, dy, dh0, call) < 0:
                break
            clstm_counter_set(counters, it + 1)
            clstm_beside_here()
    else:
        late_thread_pause(me)
    if take_backward_chunks(T, B, I, H, 3 * H, K, counters, x, w_ih, packed_ih, h0, y,
                            gates, gh, dx, dw_ih, dw_hh, db_ih, db_hh,
                            &waited if me == 0 else NULL, call) != 0:
        failed[0] = 1
    if me == 0:
        caller_done(&counters[4], start, cpu0, waited, call)
    else:
        helper_done(&counters[4], call)


cdef int gru_layer_forward_packed(int T, int B, int I, int H, const int* batch_sizes,
                                  bint reverse, const floating* x, const floating* w_ih,
                                  const floating* w_hh, const floating* b_ih,
                                  const floating* b_hh, const floating* h0, floating* y,
                                  floating* h_n, floating* workspace, int num_threads,
                                  clstm_call* call) noexcept nogil:
    """The forward of one GRU direction over a packed batch; b_ih and b_hh both NULL for
    no bias. Returns 0, -1 for bad sizes, -2 when out of memory, -3 when stopped."""
    global _units_split_last, _team_left_last, _overlapped_last
    cdef int chunk, n_chunks
    cdef int G = 3 * H
    _overlapped_last = False
    if (not sizes_ok(T, B, I, H) or not batch_sizes_ok(T, B, batch_sizes)
            or (b_ih == NULL) != (b_hh == NULL)):
        return -1
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    cdef floating* gates = workspace
    cdef floating* gh = workspace + N * G
    cdef floating* packed = NULL
    cdef floating* packed_ih = NULL
    cdef packed_plan plan
    cdef bint no_memory = False
    # A zero h0 as a buffer when W_hh holds NaN or inf, so that 0·NaN = NaN as in PyTorch
    cdef floating* zero_h0 = zero_state_if_needed(h0, B, H, G, w_hh, &no_memory)
    if no_memory:
        return -2
    if zero_h0 != NULL:
        h0 = zero_h0
    cdef int n_units
    cdef int failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_team_clock clock
    # The LSTM's rule for the unit split (its 4H sized thresholds: close enough for 3H).
    if plan_team(&plan, &num_threads, &n_units, T, B, H, N, batch_sizes, True,
                 sizeof(floating)) != 0:
        _units_split_last = n_units > 1
        free(zero_h0)
        return -2
    _units_split_last = n_units > 1
    n_chunks = plan.chunks
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            gru_forward_units_packed(T, B, I, H, batch_sizes, plan.off, reverse, x, w_ih,
                                     w_hh, b_ih, b_hh, h0, y, gates, gh, &failed,
                                     &leave_step, call)
        clstm_team_report(2 if leave_step < T and not clstm_call_stopped(call) else 0)
        if not failed and leave_step < T and not clstm_call_stopped(call):
            # The team was late: this thread runs the remaining steps alone, on all
            # units (the gates already hold their input projection).
            _team_left_last = leave_step
            packed = pack_weights(H, G, w_hh, H, True)
            failed = packed == NULL
            if not failed:
                gru_forward_rows_packed(T, B, I, H, batch_sizes, plan.off, reverse, 0, B,
                                        leave_step, x, NULL, w_hh, packed, b_ih, b_hh, h0, y,
                                        gates, gh, NULL, call)
            free(packed)
        if not failed and h_n != NULL:
            gather_final_states(&plan, B, H, reverse, y, h_n)
        clstm_blas_leave()
        free(zero_h0)
        plan_free(&plan)
        if failed:
            return -2
        return -3 if clstm_call_stopped(call) else 0
    # A padded batch the team cannot split: the projection in chunks beside the time loop
    cdef int overlap_k = 0
    cdef clstm_counter* counters = NULL
    if not reverse and N == <Py_ssize_t>T * B and not step_projection_packed(
            n_chunks, N, B, I, H, G, sizeof(floating)):
        overlap_k = overlap_chunk_steps(num_threads, n_chunks, n_units, T, B,
                                        2.0 * N * G * I)
    if overlap_k > 0:
        if packed_steps(B) and N > B:
            packed = pack_weights(H, G, w_hh, H, True)                 # P = W_hhᵀ
            failed = packed == NULL
        if chunk_products_packed(overlap_k * B):
            packed_ih = pack_weights(I, G, w_ih, I, True)              # P = W_ihᵀ
            failed = failed or packed_ih == NULL
        counters = new_counters(5 + (T + overlap_k - 1) // overlap_k)
        failed = failed or counters == NULL
        if not failed:
            with parallel(num_threads=2):
                gru_forward_overlapped(T, B, I, H, overlap_k, batch_sizes, plan.off,
                                       counters, x, w_ih, packed_ih, w_hh, packed,
                                       b_ih, b_hh, h0, y, gates, gh, h_n, call)
        free(counters)
    elif packed_products_setup(num_threads, n_chunks, N, B, I, H, G, x, w_ih, w_hh, gates,
                               &packed, &packed_ih, call) != 0:
        free(zero_h0)
        plan_free(&plan)
        clstm_blas_leave()
        return -2
    if overlap_k > 0:
        pass                                      # done above
    elif n_chunks > 1 and _row_handover:
        blocks = new_row_blocks(n_chunks)
        if blocks == NULL:
            failed = 1
        else:
            clstm_team_clock_start(&clock)
            with parallel(num_threads=n_chunks):
                gru_forward_blocks_packed(T, B, I, H, batch_sizes, plan.off, plan.bounds,
                                          reverse, n_chunks, blocks, &clock, x, packed_ih,
                                          w_hh, packed, b_ih, b_hh, h0, y, gates, gh, h_n,
                                          call)
            free(blocks)
            clstm_team_report(clock.late)
    elif n_chunks > 1:
        for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
            gru_forward_rows_packed(T, B, I, H, batch_sizes, plan.off, reverse,
                                    plan.bounds[chunk], plan.bounds[chunk + 1], 0, x, packed_ih,
                                    w_hh, packed, b_ih, b_hh, h0, y, gates, gh, h_n, call)
    else:
        gru_forward_rows_packed(T, B, I, H, batch_sizes, plan.off, reverse, 0, B, 0, x,
                                packed_ih, w_hh, packed, b_ih, b_hh, h0, y, gates, gh, h_n,
                                call)
    clstm_blas_leave()
    free(packed_ih)
    free(packed)
    free(zero_h0)
    plan_free(&plan)
    if failed:
        return -2
    return -3 if clstm_call_stopped(call) else 0


cdef inline void gru_step_back(int rows, int H, const floating* prev, floating* gates,
                               floating* gh, const floating* dh, floating* dprev,
                               bint accumulate, const floating* w_hh,
                               const floating* w_hh_packed) noexcept nogil:
    """One step of ``rows`` rows back: the gate loop turns gates and gh into their
    gradients and puts dh ⊙ z into dprev (added or written), then dprev += dgh · W_hh."""
    gru_gates_backward(rows, H, gates, gh, prev, dh, dprev, accumulate)
    weights_gemm(rows, H, 3 * H, gh, 3 * H, w_hh_packed, w_hh, False, <floating>1, dprev, H)


cdef inline int gru_backward_iter_packed(int it, int T, int B, int H, const int* bs,
                                         const Py_ssize_t* off, bint reverse, int b0, int b1,
                                         const floating* w_hh, const floating* w_hh_packed,
                                         const floating* h0, const floating* y,
                                         floating* gates, floating* gh, floating* dy,
                                         floating* dh0, clstm_call* call) noexcept nogil:
    """Iteration ``it`` of the GRU's backward walk of rows b0:b1
    (gru_backward_rows_packed), as forward_iter_packed."""
    cdef int t, r1, m, walk
    cdef int G = 3 * H
    cdef Py_ssize_t row0, prev0, rowm
    if b1 <= b0:
        return -1
    walk = step_rows(it, T, not reverse, bs, b0, b1, &t, &r1, call)
    if walk <= 0:
        return walk
    row0 = off[t] + b0
    if not reverse:
        if t > 0:
            prev0 = off[t - 1] + b0
            gru_step_back(r1 - b0, H, y + prev0 * H, gates + row0 * G, gh + row0 * G,
                          dy + row0 * H, dy + prev0 * H, True, w_hh, w_hh_packed)
        else:
            gru_step_back(r1 - b0, H, h0 + <Py_ssize_t>b0 * H if h0 != NULL else NULL,
                          gates + row0 * G, gh + row0 * G, dy + row0 * H,
                          dh0 + <Py_ssize_t>b0 * H, False, w_hh, w_hh_packed)
    else:
        m = rows_continuing(t, T, bs, b0, r1)
        if m > b0:
            prev0 = off[t + 1] + b0
            gru_step_back(m - b0, H, y + prev0 * H, gates + row0 * G, gh + row0 * G,
                          dy + row0 * H, dy + prev0 * H, True, w_hh, w_hh_packed)
        if r1 > m:
            rowm = off[t] + m
            gru_step_back(r1 - m, H, h0 + <Py_ssize_t>m * H if h0 != NULL else NULL,
                          gates + rowm * G, gh + rowm * G, dy + rowm * H,
                          dh0 + <Py_ssize_t>m * H, False, w_hh, w_hh_packed)
    return 1


cdef void gru_backward_rows_packed(int T, int B, int H, const int* bs, const Py_ssize_t* off,
                                   bint reverse, int b0, int b1, int it0,
                                   const floating* w_hh,
                                   const floating* w_hh_packed, const floating* h0,
                                   const floating* y, floating* gates, floating* gh,
                                   floating* dy, floating* dh0,
                                   clstm_call* call) noexcept nogil:
    """Rows b0:b1 back through their valid steps (backward_rows_packed's walk), from
    iteration it0 on. dy (packed) receives each step's recurrent gradient before the step
    it belongs to reads it; dh0 receives dL/dh0 of each row at the step that read h0."""
    cdef int it
    for it in range(it0, T):
        if gru_backward_iter_packed(it, T, B, H, bs, off, reverse, b0, b1, w_hh, w_hh_packed,
                                    h0, y, gates, gh, dy, dh0, call) < 0:
            return


cdef void gru_backward_blocks_packed(int T, int B, int H, const int* bs,
                                     const Py_ssize_t* off, const int* bounds, bint reverse,
                                     int n_blocks, clstm_row_block* blocks,
                                     clstm_team_clock* clock, const floating* w_hh,
                                     const floating* w_hh_packed, const floating* h0,
                                     const floating* y, floating* gates, floating* gh,
                                     floating* dy, floating* dh0,
                                     clstm_call* call) noexcept nogil:
    """One thread's part of the GRU's packed backward row split, as
    forward_blocks_packed."""
    cdef block_walk w
    walk_begin(&w, blocks, n_blocks, T, call)
    while walk_next(&w, call):
        gru_backward_iter_packed(w.s, T, B, H, bs, off, reverse, bounds[w.blk],
                                 bounds[w.blk + 1], w_hh, w_hh_packed, h0, y, gates, gh, dy,
                                 dh0, call)
    walk_end(&w, clock)


cdef int gru_layer_backward_packed(int T, int B, int I, int H, const int* batch_sizes,
                                   bint reverse, const floating* x, const floating* w_ih,
                                   const floating* w_hh, const floating* h0,
                                   const floating* y, floating* workspace, floating* dy,
                                   const floating* dh_n, floating* dx, floating* dh0,
                                   floating* dw_ih, floating* dw_hh, floating* db_ih,
                                   floating* db_hh, int num_threads,
                                   clstm_call* call) noexcept nogil:
    """The backward of one GRU direction after gru_layer_forward_packed with the same
    arguments; dw_ih, dw_hh, db_ih, db_hh are added into (the biases both NULL without
    bias). Returns as layer_backward_packed."""
    global _team_left_last, _overlapped_last
    cdef int chunk, n_chunks
    cdef int G = 3 * H
    _overlapped_last = False
    if (not sizes_ok(T, B, I, H) or not batch_sizes_ok(T, B, batch_sizes)
            or (db_ih == NULL) != (db_hh == NULL)):
        return -1
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    cdef floating* gates = workspace
    cdef floating* gh = workspace + N * G
    cdef floating* packed = NULL
    cdef bint failed = False
    cdef int status = 0
    cdef packed_plan plan
    cdef int n_units
    if plan_team(&plan, &num_threads, &n_units, T, B, H, N, batch_sizes, True,
                 sizeof(floating)) != 0:
        return -2
    n_chunks = plan.chunks
    add_final_state_grads(&plan, B, H, reverse, dy, dh_n)
    cdef int units_failed = 0
    cdef int leave_step = T
    cdef clstm_row_block* blocks = NULL
    cdef clstm_team_clock clock
    cdef int overlap_k = 0
    cdef clstm_counter* counters = NULL
    cdef floating* packed_ih = NULL
    clstm_blas_enter()
    if n_units > 1:
        _team_left_last = -1
        with parallel(num_threads=n_units):
            gru_backward_units_packed(T, B, H, batch_sizes, plan.off, reverse, w_hh, h0, y,
                                      gates, gh, dy, dh0, &units_failed, &leave_step, call)
        clstm_team_report(2 if leave_step < T and not clstm_call_stopped(call) else 0)
        failed = units_failed != 0
        if not failed and leave_step < T and not clstm_call_stopped(call):
            _team_left_last = leave_step     # late: the remaining steps on this thread
            packed = pack_weights(G, H, w_hh, H, False)              # P = W_hh
            failed = packed == NULL
            if not failed:
                gru_backward_rows_packed(T, B, H, batch_sizes, plan.off, reverse, 0, B,
                                         leave_step, w_hh, packed, h0, y, gates, gh, dy, dh0,
                                         call)
            free(packed)
            packed = NULL
    else:
        if packed_steps(B // n_chunks) and N > B:
            packed = pack_weights(G, H, w_hh, H, False, num_threads)   # P = W_hh
            failed = packed == NULL
        # A padded batch the team cannot split: dX, the weight and bias gradients in
        # chunks beside the time loop
        if not reverse and N == <Py_ssize_t>T * B:
            overlap_k = overlap_chunk_steps(num_threads, n_chunks, n_units, T, B,
                                            2.0 * N * G * (I + H + (I if dx != NULL else 0)))
        if not failed and overlap_k > 0:
            if dx != NULL and chunk_products_packed(overlap_k * B):
                packed_ih = pack_weights(G, I, w_ih, I, False)          # P = W_ih
                failed = packed_ih == NULL
            counters = new_counters(8)
            failed = failed or counters == NULL
            if not failed:
                with parallel(num_threads=2):
                    gru_backward_overlapped(T, B, I, H, overlap_k, batch_sizes, plan.off,
                                            counters, x, w_ih, packed_ih, w_hh,
                                            packed, h0, y, gates, gh, dy, dh0, dx, dw_ih,
                                            dw_hh, db_ih, db_hh, &units_failed, call)
                failed = units_failed != 0
            free(counters)
            free(packed_ih)
        elif not failed and n_chunks > 1 and _row_handover:
            blocks = new_row_blocks(n_chunks)
            failed = blocks == NULL
            if not failed:
                clstm_team_clock_start(&clock)
                with parallel(num_threads=n_chunks):
                    gru_backward_blocks_packed(T, B, H, batch_sizes, plan.off, plan.bounds,
                                               reverse, n_chunks, blocks, &clock, w_hh,
                                               packed, h0, y, gates, gh, dy, dh0, call)
                free(blocks)
                clstm_team_report(clock.late)
        elif not failed and n_chunks > 1:
            for chunk in prange(n_chunks, num_threads=n_chunks, schedule="static"):
                gru_backward_rows_packed(T, B, H, batch_sizes, plan.off, reverse,
                                         plan.bounds[chunk], plan.bounds[chunk + 1], 0, w_hh,
                                         packed, h0, y, gates, gh, dy, dh0, call)
        elif not failed:
            gru_backward_rows_packed(T, B, H, batch_sizes, plan.off, reverse, 0, B, 0, w_hh,
                                     packed, h0, y, gates, gh, dy, dh0, call)
    free(packed)
    if failed or clstm_call_stopped(call):
        clstm_blas_leave()
        plan_free(&plan)
        return -2 if failed else -3
    if overlap_k > 0:               # the products ran beside the time loop
        clstm_blas_leave()
        plan_free(&plan)
        return 0
    # gates now holds dL/d(x·W_ihᵀ + b_ih) and gh dL/d(h·W_hhᵀ + b_hh) for the N valid
    # rows: the rest is the LSTM's large GEMMs, twice.
    if dx != NULL:      # dX = dgi · W_ih
        input_gradient(num_threads, <int>N, G, I, gates, w_ih, dx, call)
    status |= weight_gradient(num_threads, G, <int>N, I, gates, x, I, dw_ih, call)
    status |= recurrent_weight_gradient(num_threads, G, T, B, H, batch_sizes, plan.off,
                                        reverse, gh, y, h0, dw_hh, call)
    clstm_blas_leave()
    plan_free(&plan)
    if status != 0:
        return -2
    if clstm_call_stopped(call):
        return -3
    if db_ih != NULL:
        parallel_column_sums(num_threads, N, G, gates, db_ih)
        parallel_column_sums(num_threads, N, G, gh, db_hh)
    return 0


cdef int gru_bidir_forward(int T, int B, int I, int H, const int* bs, const floating* x,
                           const floating** w_ih, const floating** w_hh,
                           const floating** b_ih, const floating** b_hh,
                           const floating** h0, floating** y, floating** h_n,
                           floating** workspace, int num_threads,
                           clstm_call* call) noexcept nogil:
    """Both directions of a GRU layer (bidir_forward's rule: at once, a thread each, or
    one after the other with the rows split)."""
    global _threads_used_last
    cdef int st[2]
    cdef int d
    cdef double cpu0
    cdef clstm_team_clock clock
    if directions_at_once(&num_threads, T, B, H, H, bs):
        # timed as a row split: a late direction makes the call late
        clstm_team_clock_start(&clock)
        for d in prange(2, num_threads=2, schedule="static"):
            cpu0 = direction_begin()
            st[d] = gru_layer_forward_packed(T, B, I, H, bs, d == 1, x, w_ih[d], w_hh[d],
                                             b_ih[d], b_hh[d], h0[d], y[d], h_n[d],
                                             workspace[d], 1, call)
            clstm_team_clock_check(&clock, cpu0)
        clstm_team_report(clock.late)
        _threads_used_last = 2
    else:
        for d in range(2):
            st[d] = gru_layer_forward_packed(T, B, I, H, bs, d == 1, x, w_ih[d], w_hh[d],
                                             b_ih[d], b_hh[d], h0[d], y[d], h_n[d],
                                             workspace[d], num_threads, call)
    return first_failure(st)


cdef int gru_bidir_backward(int T, int B, int I, int H, const int* bs, const floating* x,
                            const floating** w_ih, const floating** w_hh,
                            const floating** h0, const floating** y, floating** workspace,
                            floating** dy, const floating** dh_n, floating** dx,
                            floating** dh0, floating** dw_ih, floating** dw_hh,
                            floating** db_ih, floating** db_hh, int num_threads,
                            clstm_call* call) noexcept nogil:
    """Both directions' backward; dx[d] is each direction's own share of dL/dx."""
    global _threads_used_last
    cdef int st[2]
    cdef int d
    cdef double cpu0
    cdef clstm_team_clock clock
    if directions_at_once(&num_threads, T, B, H, H, bs):
        # timed as a row split: a late direction makes the call late
        clstm_team_clock_start(&clock)
        for d in prange(2, num_threads=2, schedule="static"):
            cpu0 = direction_begin()
            st[d] = gru_layer_backward_packed(T, B, I, H, bs, d == 1, x, w_ih[d], w_hh[d],
                                              h0[d], y[d], workspace[d], dy[d], dh_n[d],
                                              dx[d], dh0[d], dw_ih[d], dw_hh[d], db_ih[d],
                                              db_hh[d], 1, call)
            clstm_team_clock_check(&clock, cpu0)
        clstm_team_report(clock.late)
        _threads_used_last = 2
    else:
        for d in range(2):
            st[d] = gru_layer_backward_packed(T, B, I, H, bs, d == 1, x, w_ih[d], w_hh[d],
                                              h0[d], y[d], workspace[d], dy[d], dh_n[d],
                                              dx[d], dh0[d], dw_ih[d], dw_hh[d], db_ih[d],
                                              db_hh[d], num_threads, call)
    return first_failure(st)

# ---------------------------------------------------------------------------------------
# The public C API (declared in clstm/kernels.pxd)

cdef Py_ssize_t lstm_workspace_size(int T, int B, int H) noexcept nogil:
    if T <= 0 or B <= 0 or H <= 0 or 5.0 * T * B * H > _max_buffer_elements:
        return -1
    return <Py_ssize_t>5 * T * B * H


cdef int lstm_forward_f32(int T, int B, int I, int H, const float* x, const float* w_ih,
                          const float* w_hh, const float* bias, const float* peephole,
                          const float* h0, const float* c0, float* y, float* workspace,
                          int num_threads) noexcept nogil:
    return layer_forward(T, B, I, H, x, w_ih, w_hh, bias, peephole, h0, c0, y, workspace,
                         num_threads, NULL)


cdef int lstm_forward_f64(int T, int B, int I, int H, const double* x, const double* w_ih,
                          const double* w_hh, const double* bias, const double* peephole,
                          const double* h0, const double* c0, double* y, double* workspace,
                          int num_threads) noexcept nogil:
    return layer_forward(T, B, I, H, x, w_ih, w_hh, bias, peephole, h0, c0, y, workspace,
                         num_threads, NULL)


cdef int lstm_backward_f32(int T, int B, int I, int H, const float* x, const float* w_ih,
                           const float* w_hh, const float* peephole, const float* h0,
                           const float* c0, const float* y, float* workspace, float* dy,
                           const float* dh_n, const float* dc_n, float* dx, float* dh0,
                           float* dc0, float* dw_ih, float* dw_hh, float* dbias,
                           float* dpeephole, int num_threads) noexcept nogil:
    return layer_backward(T, B, I, H, x, w_ih, w_hh, peephole, h0, c0, y, workspace, dy,
                          dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, dbias, dpeephole,
                          num_threads, NULL)


cdef int lstm_backward_f64(int T, int B, int I, int H, const double* x, const double* w_ih,
                           const double* w_hh, const double* peephole, const double* h0,
                           const double* c0, const double* y, double* workspace, double* dy,
                           const double* dh_n, const double* dc_n, double* dx, double* dh0,
                           double* dc0, double* dw_ih, double* dw_hh, double* dbias,
                           double* dpeephole, int num_threads) noexcept nogil:
    return layer_backward(T, B, I, H, x, w_ih, w_hh, peephole, h0, c0, y, workspace, dy,
                          dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, dbias, dpeephole,
                          num_threads, NULL)


cdef Py_ssize_t lstm_packed_workspace_size(int T, int B, int H, int P,
                                           const int* batch_sizes) noexcept nogil:
    if H <= 0 or not proj_ok(H, P) or not batch_sizes_ok(T, B, batch_sizes):
        return -1
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    cdef int per_row = 6 if P > 0 else 5
    if <double>per_row * N * H > _max_buffer_elements:
        return -1
    return per_row * N * H


cdef int lstm_forward_packed_f32(int T, int B, int I, int H, int P, const int* batch_sizes,
                                 int reverse, const float* x, const float* w_ih,
                                 const float* w_hh, const float* w_hr, const float* bias,
                                 const float* peephole, const float* h0, const float* c0,
                                 float* y, float* h_n, float* c_n, float* workspace,
                                 int num_threads) noexcept nogil:
    return layer_forward_packed(T, B, I, H, P, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                w_hr, bias, peephole, h0, c0, y, h_n, c_n, workspace,
                                num_threads, NULL)


cdef int lstm_forward_packed_f64(int T, int B, int I, int H, int P, const int* batch_sizes,
                                 int reverse, const double* x, const double* w_ih,
                                 const double* w_hh, const double* w_hr, const double* bias,
                                 const double* peephole, const double* h0, const double* c0,
                                 double* y, double* h_n, double* c_n, double* workspace,
                                 int num_threads) noexcept nogil:
    return layer_forward_packed(T, B, I, H, P, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                w_hr, bias, peephole, h0, c0, y, h_n, c_n, workspace,
                                num_threads, NULL)


cdef int lstm_backward_packed_f32(int T, int B, int I, int H, int P, const int* batch_sizes,
                                  int reverse, const float* x, const float* w_ih,
                                  const float* w_hh, const float* w_hr, const float* peephole,
                                  const float* h0, const float* c0, const float* y,
                                  float* workspace, float* dy, const float* dh_n,
                                  const float* dc_n, float* dx, float* dh0, float* dc0,
                                  float* dw_ih, float* dw_hh, float* dw_hr, float* dbias,
                                  float* dpeephole, int num_threads) noexcept nogil:
    return layer_backward_packed(T, B, I, H, P, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                 w_hr, peephole, h0, c0, y, workspace, dy, dh_n, dc_n, dx,
                                 dh0, dc0, dw_ih, dw_hh, dw_hr, dbias, dpeephole,
                                 num_threads, NULL)


cdef int lstm_backward_packed_f64(int T, int B, int I, int H, int P, const int* batch_sizes,
                                  int reverse, const double* x, const double* w_ih,
                                  const double* w_hh, const double* w_hr,
                                  const double* peephole, const double* h0, const double* c0,
                                  const double* y, double* workspace, double* dy,
                                  const double* dh_n, const double* dc_n, double* dx,
                                  double* dh0, double* dc0, double* dw_ih, double* dw_hh,
                                  double* dw_hr, double* dbias, double* dpeephole,
                                  int num_threads) noexcept nogil:
    return layer_backward_packed(T, B, I, H, P, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                 w_hr, peephole, h0, c0, y, workspace, dy, dh_n, dc_n, dx,
                                 dh0, dc0, dw_ih, dw_hh, dw_hr, dbias, dpeephole,
                                 num_threads, NULL)


cdef Py_ssize_t gru_packed_workspace_size(int T, int B, int H,
                                          const int* batch_sizes) noexcept nogil:
    if H <= 0 or not batch_sizes_ok(T, B, batch_sizes):
        return -1
    cdef Py_ssize_t N = packed_rows(T, batch_sizes)
    if 6.0 * N * H > _max_buffer_elements:
        return -1
    return 6 * N * H


cdef int gru_forward_packed_f32(int T, int B, int I, int H, const int* batch_sizes,
                                int reverse, const float* x, const float* w_ih,
                                const float* w_hh, const float* b_ih, const float* b_hh,
                                const float* h0, float* y, float* h_n, float* workspace,
                                int num_threads) noexcept nogil:
    return gru_layer_forward_packed(T, B, I, H, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                    b_ih, b_hh, h0, y, h_n, workspace, num_threads, NULL)


cdef int gru_forward_packed_f64(int T, int B, int I, int H, const int* batch_sizes,
                                int reverse, const double* x, const double* w_ih,
                                const double* w_hh, const double* b_ih, const double* b_hh,
                                const double* h0, double* y, double* h_n, double* workspace,
                                int num_threads) noexcept nogil:
    return gru_layer_forward_packed(T, B, I, H, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                    b_ih, b_hh, h0, y, h_n, workspace, num_threads, NULL)


cdef int gru_backward_packed_f32(int T, int B, int I, int H, const int* batch_sizes,
                                 int reverse, const float* x, const float* w_ih,
                                 const float* w_hh, const float* h0, const float* y,
                                 float* workspace, float* dy, const float* dh_n, float* dx,
                                 float* dh0, float* dw_ih, float* dw_hh, float* db_ih,
                                 float* db_hh, int num_threads) noexcept nogil:
    return gru_layer_backward_packed(T, B, I, H, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                     h0, y, workspace, dy, dh_n, dx, dh0, dw_ih, dw_hh,
                                     db_ih, db_hh, num_threads, NULL)


cdef int gru_backward_packed_f64(int T, int B, int I, int H, const int* batch_sizes,
                                 int reverse, const double* x, const double* w_ih,
                                 const double* w_hh, const double* h0, const double* y,
                                 double* workspace, double* dy, const double* dh_n,
                                 double* dx, double* dh0, double* dw_ih, double* dw_hh,
                                 double* db_ih, double* db_hh, int num_threads) noexcept nogil:
    return gru_layer_backward_packed(T, B, I, H, batch_sizes, reverse != 0, x, w_ih, w_hh,
                                     h0, y, workspace, dy, dh_n, dx, dh0, dw_ih, dw_hh,
                                     db_ih, db_hh, num_threads, NULL)

# ---------------------------------------------------------------------------------------
# Python entry points. clstm.lstm validates user input and allocates; these re-check
# every buffer cheaply anyway, so a wrong call raises instead of reading out of bounds.

cdef void* buffer_of(object arr, str name, int typenum, Py_ssize_t size,
                     bint optional=False) except? NULL:
    """The data pointer of a C-contiguous array of the given dtype and size."""
    if arr is None:
        if optional:
            return NULL
        raise ValueError(f"{name}: expected an array, got None")
    if not cnp.PyArray_Check(arr):
        raise TypeError(f"{name}: expected a NumPy array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if cnp.PyArray_TYPE(a) != typenum:
        raise TypeError(f"{name}: expected dtype {cnp.PyArray_DescrFromType(typenum)}, "
                        f"got {a.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name}: expected a C-contiguous array")
    if cnp.PyArray_SIZE(a) != size:
        raise ValueError(f"{name}: expected {size} elements, got {cnp.PyArray_SIZE(a)}")
    return cnp.PyArray_DATA(a)


cdef void* writable_buffer_of(object arr, str name, int typenum, Py_ssize_t size,
                              bint optional=False) except? NULL:
    cdef void* p = buffer_of(arr, name, typenum, size, optional)
    if p != NULL and not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>arr):
        raise ValueError(f"{name}: expected a writable array")
    return p


cdef int typenum_of(object x) except -1:
    if not cnp.PyArray_Check(x):
        raise TypeError(f"x: expected a NumPy array, got {type(x).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"x: expected float32 or float64, got {x.dtype}")
    return typenum


import threading as _threading
cdef unsigned long _main_thread_ident = _threading.main_thread().ident


cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident()


cdef inline void start_call(clstm_call* call):
    """A call checks Python's signal handlers while it runs only in the main thread,
    the only one where Python runs them."""
    clstm_call_init(call, PyThread_get_thread_ident() == _main_thread_ident)


cdef int raise_pending(clstm_call* call) except -1:
    """Re-raise the exception a signal handler raised during the call (KeyboardInterrupt
    for Ctrl-C), if any."""
    if call.exc_type == NULL:
        return 0
    PyErr_Restore(call.exc_type, call.exc_value, call.exc_tb)
    call.exc_type = call.exc_value = call.exc_tb = NULL
    return -1


cdef check_status(int status, str what, clstm_call* call, str cell="lstm"):
    raise_pending(call)
    if status == -2:
        raise MemoryError(f"{cell} {what}: out of memory for the packed weights")
    if status == -3:
        raise KeyboardInterrupt(f"{cell} {what}: interrupted")
    if status != 0:
        raise ValueError(f"{cell} {what}: invalid sizes")


def forward(int T, int B, int I, int H, x, w_ih, w_hh, bias, peephole, h0, c0, y,
            workspace, int num_threads=1, *, bias_hh=None, h_n=None, c_n=None):
    """Forward of one layer over T steps; fills ``y`` (T,B,H) and ``workspace``.

    All arrays C-contiguous and of one dtype (float32 or float64); ``peephole``, ``h0``
    and ``c0`` may be None. The final state is ``y[T-1]`` and the last (B,H) block of
    ``workspace``; given ``h_n`` and ``c_n`` (B,H), it is also copied there. With
    ``bias_hh``, the gates' bias is ``bias + bias_hh`` (PyTorch's two biases; summed
    here, which in Python cost a NumPy call per layer and call).
    """
    if not sizes_ok(T, B, I, H):
        raise ValueError(f"expected positive sizes that fit BLAS's int, got "
                         f"T={T}, B={B}, I={I}, H={H}")
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, G = 4 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, TB * I)
    cdef void* pwi = buffer_of(w_ih, "w_ih", tn, G * I)
    cdef void* pwh = buffer_of(w_hh, "w_hh", tn, G * H)
    cdef void* pb = buffer_of(bias, "bias", tn, G)
    cdef void* pp = buffer_of(peephole, "peephole", tn, 3 * H, True)
    cdef void* ph0 = buffer_of(h0, "h0", tn, B * H, True)
    cdef void* pc0 = buffer_of(c0, "c0", tn, B * H, True)
    cdef void* py = writable_buffer_of(y, "y", tn, TB * H)
    cdef void* pw = writable_buffer_of(workspace, "workspace", tn, 5 * TB * H)
    cdef void* pbh = buffer_of(bias_hh, "bias_hh", tn, G, True)
    cdef void* phn = writable_buffer_of(h_n, "h_n", tn, <Py_ssize_t>B * H, True)
    cdef void* pcn = writable_buffer_of(c_n, "c_n", tn, <Py_ssize_t>B * H, True)
    cdef size_t elem = 4 if tn == cnp.NPY_FLOAT32 else 8
    cdef Py_ssize_t k
    cdef int status
    cdef clstm_call call
    cdef void* summed = NULL
    if pbh != NULL:
        summed = malloc(G * elem)
        if summed == NULL:
            raise MemoryError("lstm forward: out of memory for the summed bias")
        for k in range(G):
            if tn == cnp.NPY_FLOAT32:
                (<float*>summed)[k] = (<float*>pb)[k] + (<float*>pbh)[k]
            else:
                (<double*>summed)[k] = (<double*>pb)[k] + (<double*>pbh)[k]
        pb = summed
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = layer_forward(T, B, I, H, <float*>px, <float*>pwi, <float*>pwh,
                                   <float*>pb, <float*>pp, <float*>ph0, <float*>pc0,
                                   <float*>py, <float*>pw, num_threads, &call)
        else:
            status = layer_forward(T, B, I, H, <double*>px, <double*>pwi, <double*>pwh,
                                   <double*>pb, <double*>pp, <double*>ph0, <double*>pc0,
                                   <double*>py, <double*>pw, num_threads, &call)
    free(summed)
    check_status(status, "forward", &call)
    # the final state: y's and the cells' last step (the workspace ends with the cells)
    if phn != NULL:
        memcpy(phn, <char*>py + (TB - B) * H * elem, B * H * elem)
    if pcn != NULL:
        memcpy(pcn, <char*>pw + (5 * TB * H - B * H) * elem, B * H * elem)


def backward(int T, int B, int I, int H, x, w_ih, w_hh, peephole, h0, c0, y, workspace,
             dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, dbias, dpeephole,
             int num_threads=1, *, dbias_hh=None):
    """Backward of one layer after :func:`forward` with the same arrays.

    ``workspace`` and ``dy`` are destroyed; ``dx``, ``dh0``, ``dc0`` are overwritten
    (``dx`` may be None to skip it); ``dw_ih``, ``dw_hh``, ``dbias``, ``dpeephole`` are
    added into. ``dbias`` may be None (no bias). With ``dbias_hh`` (PyTorch's two
    biases), the bias gradient is added into both: summed first, then added to each, as
    two NumPy additions of one summed vector would.
    """
    if not sizes_ok(T, B, I, H):
        raise ValueError(f"expected positive sizes that fit BLAS's int, got "
                         f"T={T}, B={B}, I={I}, H={H}")
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t TB = <Py_ssize_t>T * B, G = 4 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, TB * I)
    cdef void* pwi = buffer_of(w_ih, "w_ih", tn, G * I)
    cdef void* pwh = buffer_of(w_hh, "w_hh", tn, G * H)
    cdef void* pp = buffer_of(peephole, "peephole", tn, 3 * H, True)
    cdef void* ph0 = buffer_of(h0, "h0", tn, B * H, True)
    cdef void* pc0 = buffer_of(c0, "c0", tn, B * H, True)
    cdef void* py = buffer_of(y, "y", tn, TB * H)
    cdef void* pw = writable_buffer_of(workspace, "workspace", tn, 5 * TB * H)
    cdef void* pdy = writable_buffer_of(dy, "dy", tn, TB * H)
    cdef void* pdhn = buffer_of(dh_n, "dh_n", tn, B * H, True)
    cdef void* pdcn = buffer_of(dc_n, "dc_n", tn, B * H, True)
    cdef void* pdx = writable_buffer_of(dx, "dx", tn, TB * I, True)
    cdef void* pdh0 = writable_buffer_of(dh0, "dh0", tn, B * H)
    cdef void* pdc0 = writable_buffer_of(dc0, "dc0", tn, B * H)
    cdef void* pdwi = writable_buffer_of(dw_ih, "dw_ih", tn, G * I)
    cdef void* pdwh = writable_buffer_of(dw_hh, "dw_hh", tn, G * H)
    cdef void* pdb = writable_buffer_of(dbias, "dbias", tn, G, True)
    cdef void* pdbh = writable_buffer_of(dbias_hh, "dbias_hh", tn, G, True)
    cdef void* pdp = writable_buffer_of(dpeephole, "dpeephole", tn, 3 * H, pp == NULL)
    cdef size_t elem = 4 if tn == cnp.NPY_FLOAT32 else 8
    cdef Py_ssize_t k
    cdef int status
    cdef clstm_call call
    cdef void* into_one = pdb
    cdef void* summed = NULL
    if pdbh != NULL and pdb == NULL:
        raise ValueError("dbias_hh: expected dbias with it, got dbias=None")
    if pdb == NULL or pdbh != NULL:
        # the column sums go to a zeroed scratch vector (none asked: dropped), added
        # into dbias and dbias_hh afterwards
        summed = calloc(G, elem)
        if summed == NULL:
            raise MemoryError("lstm backward: out of memory for the bias gradient")
        pdb = summed
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            status = layer_backward(T, B, I, H, <float*>px, <float*>pwi, <float*>pwh,
                                    <float*>pp, <float*>ph0, <float*>pc0, <float*>py,
                                    <float*>pw, <float*>pdy, <float*>pdhn, <float*>pdcn,
                                    <float*>pdx, <float*>pdh0, <float*>pdc0, <float*>pdwi,
                                    <float*>pdwh, <float*>pdb, <float*>pdp, num_threads,
                                    &call)
        else:
            status = layer_backward(T, B, I, H, <double*>px, <double*>pwi, <double*>pwh,
                                    <double*>pp, <double*>ph0, <double*>pc0, <double*>py,
                                    <double*>pw, <double*>pdy, <double*>pdhn,
                                    <double*>pdcn, <double*>pdx, <double*>pdh0,
                                    <double*>pdc0, <double*>pdwi, <double*>pdwh,
                                    <double*>pdb, <double*>pdp, num_threads, &call)
    if status == 0 and summed != NULL and into_one != NULL:
        for k in range(G):
            if tn == cnp.NPY_FLOAT32:
                (<float*>into_one)[k] += (<float*>summed)[k]
                (<float*>pdbh)[k] += (<float*>summed)[k]
            else:
                (<double*>into_one)[k] += (<double*>summed)[k]
                (<double*>pdbh)[k] += (<double*>summed)[k]
    free(summed)
    check_status(status, "backward", &call)


cdef const int* batch_sizes_of(object batch_sizes, int T, int B) except NULL:
    """The data pointer of ``batch_sizes`` (T int32, B first, non-increasing, >= 1)."""
    cdef const int* p = <const int*>buffer_of(batch_sizes, "batch_sizes", cnp.NPY_INT32, T)
    if not batch_sizes_ok(T, B, p):
        raise ValueError(f"batch_sizes: expected {T} non-increasing counts from {B} down "
                         f"to at least 1, got {list(batch_sizes)}")
    return p


cdef pair_of(object arrays, str name):
    if not isinstance(arrays, (tuple, list)) or len(arrays) != 2:
        raise TypeError(f"{name}: expected a pair (forward, reverse), got "
                        f"{type(arrays).__name__}")
    return arrays


cdef list _directions(object arrays, str name, int D):
    """[arrays] for one direction, the pair's items for two."""
    if D == 1:
        return [arrays]
    return list(pair_of(arrays, name))


# The packed entry points of both cells: one direction (forward_packed, backward_packed,
# gru_...) or both (..._bidir, every per-direction argument a pair), each cell's forward
# and backward checked by one function for D = 1 and 2 (_lstm_forward, _gru_forward...).

cdef const int* checked_batch(int T, int B, int I, int H, int P, batch_sizes,
                              bint projections) except NULL:
    """The sizes checked (0 <= P < H too where the cell has ``projections``), then
    batch_sizes' data pointer (batch_sizes_of)."""
    if projections and (not sizes_ok(T, B, I, H) or not proj_ok(H, P)):
        raise ValueError(f"expected positive sizes that fit BLAS's int and 0 <= P < H, got "
                         f"T={T}, B={B}, I={I}, H={H}, P={P}")
    if not projections and not sizes_ok(T, B, I, H):
        raise ValueError(f"expected positive sizes that fit BLAS's int, got "
                         f"T={T}, B={B}, I={I}, H={H}")
    return batch_sizes_of(batch_sizes, T, B)


cdef _lstm_forward(int T, int B, int I, int H, int P, batch_sizes, int D, bint reverse, x,
                   w_ih, w_hh, w_hr, bias, peephole, h0, c0, y, h_n, c_n, workspace,
                   int num_threads):
    cdef const int* pbs = checked_batch(T, B, I, H, P, batch_sizes, True)
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t N = packed_rows(T, pbs), G = 4 * <Py_ssize_t>H
    cdef Py_ssize_t Pw = P if P > 0 else H
    cdef Py_ssize_t W = (6 if P > 0 else 5) * N * H
    cdef void* px = buffer_of(x, "x", tn, N * I)
    cdef void* pwi[2]
    cdef void* pwh[2]
    cdef void* pwr[2]
    cdef void* pb[2]
    cdef void* pp[2]
    cdef void* ph0[2]
    cdef void* pc0[2]
    cdef void* py[2]
    cdef void* phn[2]
    cdef void* pcn[2]
    cdef void* pw[2]
    cdef int d
    args = [_directions(a, n, D) for a, n in (
        (w_ih, "w_ih"), (w_hh, "w_hh"), (w_hr, "w_hr"), (bias, "bias"),
        (peephole, "peephole"), (h0, "h0"), (c0, "c0"), (y, "y"), (h_n, "h_n"),
        (c_n, "c_n"), (workspace, "workspace"))]
    for d in range(D):
        pwi[d] = buffer_of(args[0][d], "w_ih", tn, G * I)
        pwh[d] = buffer_of(args[1][d], "w_hh", tn, G * Pw)
        pwr[d] = buffer_of(args[2][d], "w_hr", tn, Pw * H, P == 0)
        pb[d] = buffer_of(args[3][d], "bias", tn, G)
        pp[d] = buffer_of(args[4][d], "peephole", tn, 3 * H, True)
        ph0[d] = buffer_of(args[5][d], "h0", tn, B * Pw, True)
        pc0[d] = buffer_of(args[6][d], "c0", tn, B * H, True)
        py[d] = writable_buffer_of(args[7][d], "y", tn, N * Pw)
        phn[d] = writable_buffer_of(args[8][d], "h_n", tn, B * Pw, True)
        pcn[d] = writable_buffer_of(args[9][d], "c_n", tn, B * H, phn[d] == NULL)
        pw[d] = writable_buffer_of(args[10][d], "workspace", tn, W)
        if P == 0 and pwr[d] != NULL:
            raise ValueError("w_hr: expected None without a projection (P = 0)")
        if phn[d] == NULL:
            pcn[d] = NULL
    cdef int status
    cdef clstm_call call
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            if D == 1:
                status = layer_forward_packed(T, B, I, H, P, pbs, reverse, <float*>px,
                                              <float*>pwi[0], <float*>pwh[0], <float*>pwr[0],
                                              <float*>pb[0], <float*>pp[0], <float*>ph0[0],
                                              <float*>pc0[0], <float*>py[0], <float*>phn[0],
                                              <float*>pcn[0], <float*>pw[0], num_threads,
                                              &call)
            else:
                status = bidir_forward(T, B, I, H, P, pbs, <float*>px, <const float**>pwi,
                                       <const float**>pwh, <const float**>pwr,
                                       <const float**>pb, <const float**>pp,
                                       <const float**>ph0, <const float**>pc0, <float**>py,
                                       <float**>phn, <float**>pcn, <float**>pw, num_threads,
                                       &call)
        else:
            if D == 1:
                status = layer_forward_packed(T, B, I, H, P, pbs, reverse, <double*>px,
                                              <double*>pwi[0], <double*>pwh[0],
                                              <double*>pwr[0], <double*>pb[0],
                                              <double*>pp[0], <double*>ph0[0],
                                              <double*>pc0[0], <double*>py[0],
                                              <double*>phn[0], <double*>pcn[0],
                                              <double*>pw[0], num_threads, &call)
            else:
                status = bidir_forward(T, B, I, H, P, pbs, <double*>px, <const double**>pwi,
                                       <const double**>pwh, <const double**>pwr,
                                       <const double**>pb, <const double**>pp,
                                       <const double**>ph0, <const double**>pc0,
                                       <double**>py, <double**>phn, <double**>pcn,
                                       <double**>pw, num_threads, &call)
    check_status(status, "forward", &call)


cdef _lstm_backward(int T, int B, int I, int H, int P, batch_sizes, int D, bint reverse, x,
                    w_ih, w_hh, w_hr, peephole, h0, c0, y, workspace, dy, dh_n, dc_n, dx,
                    dh0, dc0, dw_ih, dw_hh, dw_hr, dbias, dpeephole, int num_threads):
    cdef const int* pbs = checked_batch(T, B, I, H, P, batch_sizes, True)
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t N = packed_rows(T, pbs), G = 4 * <Py_ssize_t>H
    cdef Py_ssize_t Pw = P if P > 0 else H
    cdef Py_ssize_t W = (6 if P > 0 else 5) * N * H
    cdef void* px = buffer_of(x, "x", tn, N * I)
    cdef void* pwi[2]
    cdef void* pwh[2]
    cdef void* pwr[2]
    cdef void* pp[2]
    cdef void* ph0[2]
    cdef void* pc0[2]
    cdef void* py[2]
    cdef void* pw[2]
    cdef void* pdy[2]
    cdef void* pdhn[2]
    cdef void* pdcn[2]
    cdef void* pdx[2]
    cdef void* pdh0[2]
    cdef void* pdc0[2]
    cdef void* pdwi[2]
    cdef void* pdwh[2]
    cdef void* pdwr[2]
    cdef void* pdb[2]
    cdef void* pdp[2]
    cdef int d
    args = [_directions(a, n, D) for a, n in (
        (w_ih, "w_ih"), (w_hh, "w_hh"), (w_hr, "w_hr"), (peephole, "peephole"), (h0, "h0"),
        (c0, "c0"), (y, "y"), (workspace, "workspace"), (dy, "dy"), (dh_n, "dh_n"),
        (dc_n, "dc_n"), (dx, "dx"), (dh0, "dh0"), (dc0, "dc0"), (dw_ih, "dw_ih"),
        (dw_hh, "dw_hh"), (dw_hr, "dw_hr"), (dbias, "dbias"), (dpeephole, "dpeephole"))]
    for d in range(D):
        pwi[d] = buffer_of(args[0][d], "w_ih", tn, G * I)
        pwh[d] = buffer_of(args[1][d], "w_hh", tn, G * Pw)
        pwr[d] = buffer_of(args[2][d], "w_hr", tn, Pw * H, P == 0)
        pp[d] = buffer_of(args[3][d], "peephole", tn, 3 * H, True)
        ph0[d] = buffer_of(args[4][d], "h0", tn, B * Pw, True)
        pc0[d] = buffer_of(args[5][d], "c0", tn, B * H, True)
        py[d] = buffer_of(args[6][d], "y", tn, N * Pw)
        pw[d] = writable_buffer_of(args[7][d], "workspace", tn, W)
        pdy[d] = writable_buffer_of(args[8][d], "dy", tn, N * Pw)
        pdhn[d] = buffer_of(args[9][d], "dh_n", tn, B * Pw, True)
        pdcn[d] = buffer_of(args[10][d], "dc_n", tn, B * H, True)
        pdx[d] = writable_buffer_of(args[11][d], "dx", tn, N * I, True)
        pdh0[d] = writable_buffer_of(args[12][d], "dh0", tn, B * Pw)
        pdc0[d] = writable_buffer_of(args[13][d], "dc0", tn, B * H)
        pdwi[d] = writable_buffer_of(args[14][d], "dw_ih", tn, G * I)
        pdwh[d] = writable_buffer_of(args[15][d], "dw_hh", tn, G * Pw)
        pdwr[d] = writable_buffer_of(args[16][d], "dw_hr", tn, Pw * H, P == 0)
        pdb[d] = writable_buffer_of(args[17][d], "dbias", tn, G)
        pdp[d] = writable_buffer_of(args[18][d], "dpeephole", tn, 3 * H, pp[d] == NULL)
        if P == 0 and (pwr[d] != NULL or pdwr[d] != NULL):
            raise ValueError("w_hr, dw_hr: expected None without a projection (P = 0)")
    cdef int status
    cdef clstm_call call
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            if D == 1:
                status = layer_backward_packed(T, B, I, H, P, pbs, reverse, <float*>px,
                                               <float*>pwi[0], <float*>pwh[0],
                                               <float*>pwr[0], <float*>pp[0],
                                               <float*>ph0[0], <float*>pc0[0],
                                               <float*>py[0], <float*>pw[0],
                                               <float*>pdy[0], <float*>pdhn[0],
                                               <float*>pdcn[0], <float*>pdx[0],
                                               <float*>pdh0[0], <float*>pdc0[0],
                                               <float*>pdwi[0], <float*>pdwh[0],
                                               <float*>pdwr[0], <float*>pdb[0],
                                               <float*>pdp[0], num_threads, &call)
            else:
                status = bidir_backward(T, B, I, H, P, pbs, <float*>px, <const float**>pwi,
                                        <const float**>pwh, <const float**>pwr,
                                        <const float**>pp, <const float**>ph0,
                                        <const float**>pc0, <const float**>py, <float**>pw,
                                        <float**>pdy, <const float**>pdhn,
                                        <const float**>pdcn, <float**>pdx, <float**>pdh0,
                                        <float**>pdc0, <float**>pdwi, <float**>pdwh,
                                        <float**>pdwr, <float**>pdb, <float**>pdp,
                                        num_threads, &call)
        else:
            if D == 1:
                status = layer_backward_packed(T, B, I, H, P, pbs, reverse, <double*>px,
                                               <double*>pwi[0], <double*>pwh[0],
                                               <double*>pwr[0], <double*>pp[0],
                                               <double*>ph0[0], <double*>pc0[0],
                                               <double*>py[0], <double*>pw[0],
                                               <double*>pdy[0], <double*>pdhn[0],
                                               <double*>pdcn[0], <double*>pdx[0],
                                               <double*>pdh0[0], <double*>pdc0[0],
                                               <double*>pdwi[0], <double*>pdwh[0],
                                               <double*>pdwr[0], <double*>pdb[0],
                                               <double*>pdp[0], num_threads, &call)
            else:
                status = bidir_backward(T, B, I, H, P, pbs, <double*>px,
                                        <const double**>pwi, <const double**>pwh,
                                        <const double**>pwr, <const double**>pp,
                                        <const double**>ph0, <const double**>pc0,
                                        <const double**>py, <double**>pw, <double**>pdy,
                                        <const double**>pdhn, <const double**>pdcn,
                                        <double**>pdx, <double**>pdh0, <double**>pdc0,
                                        <double**>pdwi, <double**>pdwh, <double**>pdwr,
                                        <double**>pdb, <double**>pdp, num_threads, &call)
    check_status(status, "backward", &call)


def forward_packed(int T, int B, int I, int H, int P, batch_sizes, bint reverse, x, w_ih,
                   w_hh, w_hr, bias, peephole, h0, c0, y, h_n, c_n, workspace,
                   int num_threads=1):
    """Forward of one direction of a layer over a packed batch (see "the packed layout"
    above), projected to P features (P = 0 and w_hr None: no projection; the state is
    then H wide, P' = H). x (N, I), y (N, P'), h0 (B, P'), c0 (B, H), workspace
    (5 or 6)·N·H with N = sum(batch_sizes); h_n (B, P'), c_n (B, H) receive each row's
    final state (both None to skip). ``peephole``, ``h0``, ``c0`` may be None."""
    _lstm_forward(T, B, I, H, P, batch_sizes, 1, reverse, x, w_ih, w_hh, w_hr, bias,
                  peephole, h0, c0, y, h_n, c_n, workspace, num_threads)


def backward_packed(int T, int B, int I, int H, int P, batch_sizes, bint reverse, x, w_ih,
                    w_hh, w_hr, peephole, h0, c0, y, workspace, dy, dh_n, dc_n, dx, dh0,
                    dc0, dw_ih, dw_hh, dw_hr, dbias, dpeephole, int num_threads=1):
    """Backward of one direction of a layer after :func:`forward_packed` with the same
    arrays; as :func:`backward`, with dy (N, P') and dx (N, I) packed, dh0 (B, P'), and
    dw_hr (added into) with a projection."""
    _lstm_backward(T, B, I, H, P, batch_sizes, 1, reverse, x, w_ih, w_hh, w_hr, peephole,
                   h0, c0, y, workspace, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, dw_hr,
                   dbias, dpeephole, num_threads)


def forward_packed_bidir(int T, int B, int I, int H, int P, batch_sizes, x, w_ih, w_hh,
                         w_hr, bias, peephole, h0, c0, y, h_n, c_n, workspace,
                         int num_threads=1):
    """Both directions of a bidirectional layer, as :func:`forward_packed` with
    ``reverse`` False then True; every argument but the sizes, ``batch_sizes`` and ``x``
    is a pair (forward, reverse). With 2 threads the directions run at once, one per
    thread (see _set_parallel_directions)."""
    _lstm_forward(T, B, I, H, P, batch_sizes, 2, False, x, w_ih, w_hh, w_hr, bias, peephole,
                  h0, c0, y, h_n, c_n, workspace, num_threads)


def backward_packed_bidir(int T, int B, int I, int H, int P, batch_sizes, x, w_ih, w_hh,
                          w_hr, peephole, h0, c0, y, workspace, dy, dh_n, dc_n, dx, dh0,
                          dc0, dw_ih, dw_hh, dw_hr, dbias, dpeephole, int num_threads=1):
    """Both directions' backward after :func:`forward_packed_bidir`, as
    :func:`backward_packed`; every argument but the sizes, ``batch_sizes`` and ``x`` is a
    pair (forward, reverse), and dx[d] receives direction d's share of dL/dx."""
    _lstm_backward(T, B, I, H, P, batch_sizes, 2, False, x, w_ih, w_hh, w_hr, peephole, h0,
                   c0, y, workspace, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, dw_hr,
                   dbias, dpeephole, num_threads)


cdef _gru_forward(int T, int B, int I, int H, batch_sizes, int D, bint reverse, x, w_ih,
                  w_hh, b_ih, b_hh, h0, y, h_n, workspace, int num_threads):
    cdef const int* pbs = checked_batch(T, B, I, H, 0, batch_sizes, False)
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t N = packed_rows(T, pbs), G = 3 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, N * I)
    cdef void* pwi[2]
    cdef void* pwh[2]
    cdef void* pbi[2]
    cdef void* pbh[2]
    cdef void* ph0[2]
    cdef void* py[2]
    cdef void* phn[2]
    cdef void* pw[2]
    cdef int d
    args = [_directions(a, n, D) for a, n in (
        (w_ih, "w_ih"), (w_hh, "w_hh"), (b_ih, "b_ih"), (b_hh, "b_hh"), (h0, "h0"),
        (y, "y"), (h_n, "h_n"), (workspace, "workspace"))]
    for d in range(D):
        pwi[d] = buffer_of(args[0][d], "w_ih", tn, G * I)
        pwh[d] = buffer_of(args[1][d], "w_hh", tn, G * H)
        pbi[d] = buffer_of(args[2][d], "b_ih", tn, G, True)
        pbh[d] = buffer_of(args[3][d], "b_hh", tn, G, True)
        if (pbi[d] == NULL) != (pbh[d] == NULL):
            raise ValueError("b_ih, b_hh: expected two arrays or two None (no bias)")
        ph0[d] = buffer_of(args[4][d], "h0", tn, B * H, True)
        py[d] = writable_buffer_of(args[5][d], "y", tn, N * H)
        phn[d] = writable_buffer_of(args[6][d], "h_n", tn, B * H, True)
        pw[d] = writable_buffer_of(args[7][d], "workspace", tn, 6 * N * H)
    cdef int status
    cdef clstm_call call
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            if D == 1:
                status = gru_layer_forward_packed(T, B, I, H, pbs, reverse, <float*>px,
                                                  <float*>pwi[0], <float*>pwh[0],
                                                  <float*>pbi[0], <float*>pbh[0],
                                                  <float*>ph0[0], <float*>py[0],
                                                  <float*>phn[0], <float*>pw[0], num_threads,
                                                  &call)
            else:
                status = gru_bidir_forward(T, B, I, H, pbs, <float*>px, <const float**>pwi,
                                           <const float**>pwh, <const float**>pbi,
                                           <const float**>pbh, <const float**>ph0,
                                           <float**>py, <float**>phn, <float**>pw,
                                           num_threads, &call)
        else:
            if D == 1:
                status = gru_layer_forward_packed(T, B, I, H, pbs, reverse, <double*>px,
                                                  <double*>pwi[0], <double*>pwh[0],
                                                  <double*>pbi[0], <double*>pbh[0],
                                                  <double*>ph0[0], <double*>py[0],
                                                  <double*>phn[0], <double*>pw[0],
                                                  num_threads, &call)
            else:
                status = gru_bidir_forward(T, B, I, H, pbs, <double*>px, <const double**>pwi,
                                           <const double**>pwh, <const double**>pbi,
                                           <const double**>pbh, <const double**>ph0,
                                           <double**>py, <double**>phn, <double**>pw,
                                           num_threads, &call)
    check_status(status, "forward", &call, "gru")


cdef _gru_backward(int T, int B, int I, int H, batch_sizes, int D, bint reverse, x, w_ih,
                   w_hh, h0, y, workspace, dy, dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh,
                   int num_threads):
    cdef const int* pbs = checked_batch(T, B, I, H, 0, batch_sizes, False)
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t N = packed_rows(T, pbs), G = 3 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, N * I)
    cdef void* pwi[2]
    cdef void* pwh[2]
    cdef void* ph0[2]
    cdef void* py[2]
    cdef void* pw[2]
    cdef void* pdy[2]
    cdef void* pdhn[2]
    cdef void* pdx[2]
    cdef void* pdh0[2]
    cdef void* pdwi[2]
    cdef void* pdwh[2]
    cdef void* pdbi[2]
    cdef void* pdbh[2]
    cdef int d
    args = [_directions(a, n, D) for a, n in (
        (w_ih, "w_ih"), (w_hh, "w_hh"), (h0, "h0"), (y, "y"), (workspace, "workspace"),
        (dy, "dy"), (dh_n, "dh_n"), (dx, "dx"), (dh0, "dh0"), (dw_ih, "dw_ih"),
        (dw_hh, "dw_hh"), (db_ih, "db_ih"), (db_hh, "db_hh"))]
    for d in range(D):
        pwi[d] = buffer_of(args[0][d], "w_ih", tn, G * I)
        pwh[d] = buffer_of(args[1][d], "w_hh", tn, G * H)
        ph0[d] = buffer_of(args[2][d], "h0", tn, B * H, True)
        py[d] = buffer_of(args[3][d], "y", tn, N * H)
        pw[d] = writable_buffer_of(args[4][d], "workspace", tn, 6 * N * H)
        pdy[d] = writable_buffer_of(args[5][d], "dy", tn, N * H)
        pdhn[d] = buffer_of(args[6][d], "dh_n", tn, B * H, True)
        pdx[d] = writable_buffer_of(args[7][d], "dx", tn, N * I, True)
        pdh0[d] = writable_buffer_of(args[8][d], "dh0", tn, B * H)
        pdwi[d] = writable_buffer_of(args[9][d], "dw_ih", tn, G * I)
        pdwh[d] = writable_buffer_of(args[10][d], "dw_hh", tn, G * H)
        pdbi[d] = writable_buffer_of(args[11][d], "db_ih", tn, G, True)
        pdbh[d] = writable_buffer_of(args[12][d], "db_hh", tn, G, True)
        if (pdbi[d] == NULL) != (pdbh[d] == NULL):
            raise ValueError("db_ih, db_hh: expected two arrays or two None (no bias)")
    cdef int status
    cdef clstm_call call
    start_call(&call)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            if D == 1:
                status = gru_layer_backward_packed(
                    T, B, I, H, pbs, reverse, <float*>px, <float*>pwi[0], <float*>pwh[0],
                    <float*>ph0[0], <float*>py[0], <float*>pw[0], <float*>pdy[0],
                    <float*>pdhn[0], <float*>pdx[0], <float*>pdh0[0], <float*>pdwi[0],
                    <float*>pdwh[0], <float*>pdbi[0], <float*>pdbh[0], num_threads, &call)
            else:
                status = gru_bidir_backward(
                    T, B, I, H, pbs, <float*>px, <const float**>pwi, <const float**>pwh,
                    <const float**>ph0, <const float**>py, <float**>pw, <float**>pdy,
                    <const float**>pdhn, <float**>pdx, <float**>pdh0, <float**>pdwi,
                    <float**>pdwh, <float**>pdbi, <float**>pdbh, num_threads, &call)
        else:
            if D == 1:
                status = gru_layer_backward_packed(
                    T, B, I, H, pbs, reverse, <double*>px, <double*>pwi[0], <double*>pwh[0],
                    <double*>ph0[0], <double*>py[0], <double*>pw[0], <double*>pdy[0],
                    <double*>pdhn[0], <double*>pdx[0], <double*>pdh0[0], <double*>pdwi[0],
                    <double*>pdwh[0], <double*>pdbi[0], <double*>pdbh[0], num_threads, &call)
            else:
                status = gru_bidir_backward(
                    T, B, I, H, pbs, <double*>px, <const double**>pwi, <const double**>pwh,
                    <const double**>ph0, <const double**>py, <double**>pw, <double**>pdy,
                    <const double**>pdhn, <double**>pdx, <double**>pdh0, <double**>pdwi,
                    <double**>pdwh, <double**>pdbi, <double**>pdbh, num_threads, &call)
    check_status(status, "backward", &call, "gru")


def gru_forward_packed(int T, int B, int I, int H, batch_sizes, bint reverse, x, w_ih, w_hh,
                       b_ih, b_hh, h0, y, h_n, workspace, int num_threads=1):
    """Forward of one GRU direction over a packed batch (see "the packed layout" above):
    x (N, I), y (N, H), h0 and h_n (B, H) (None: zeros / skip), workspace 6·N·H with N =
    sum(batch_sizes); b_ih, b_hh (3H,) or both None (no bias)."""
    _gru_forward(T, B, I, H, batch_sizes, 1, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, y, h_n,
                 workspace, num_threads)


def gru_backward_packed(int T, int B, int I, int H, batch_sizes, bint reverse, x, w_ih,
                        w_hh, h0, y, workspace, dy, dh_n, dx, dh0, dw_ih, dw_hh, db_ih,
                        db_hh, int num_threads=1):
    """Backward of one GRU direction after :func:`gru_forward_packed` with the same
    arrays: dy (N, H) is overwritten, dh_n (B, H) may be None, dx (N, I) (None: skipped)
    and dh0 (B, H) are written, dw_ih, dw_hh, db_ih, db_hh added into (the biases both
    None without bias)."""
    _gru_backward(T, B, I, H, batch_sizes, 1, reverse, x, w_ih, w_hh, h0, y, workspace, dy,
                  dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, num_threads)


def gru_forward_packed_bidir(int T, int B, int I, int H, batch_sizes, x, w_ih, w_hh, b_ih,
                             b_hh, h0, y, h_n, workspace, int num_threads=1):
    """Both directions of a bidirectional GRU layer, as :func:`gru_forward_packed` with
    ``reverse`` False then True; every argument but the sizes, ``batch_sizes`` and ``x``
    is a pair (forward, reverse). With 2 threads the directions run at once."""
    _gru_forward(T, B, I, H, batch_sizes, 2, False, x, w_ih, w_hh, b_ih, b_hh, h0, y, h_n,
                 workspace, num_threads)


def gru_backward_packed_bidir(int T, int B, int I, int H, batch_sizes, x, w_ih, w_hh, h0, y,
                              workspace, dy, dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh,
                              int num_threads=1):
    """Both directions' backward after :func:`gru_forward_packed_bidir`, every
    per-direction argument a pair; dx[d] receives direction d's share of dL/dx."""
    _gru_backward(T, B, I, H, batch_sizes, 2, False, x, w_ih, w_hh, h0, y, workspace, dy,
                  dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, num_threads)

def step(int B, int I, int H, x, w_ih, w_hh, b_ih, b_hh, peephole, h, c, h_out, c_out,
         gates):
    """One time step of one layer (inference): fills ``h_out``, ``c_out`` (B, H).

    ``peephole``, ``h`` and ``c`` may be None; ``gates`` is (B, 4H) scratch.
    """
    if not sizes_ok(1, B, I, H):
        raise ValueError(f"expected positive sizes that fit BLAS's int, got B={B}, I={I}, H={H}")
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t G = 4 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, <Py_ssize_t>B * I)
    cdef void* pwi = buffer_of(w_ih, "w_ih", tn, G * I)
    cdef void* pwh = buffer_of(w_hh, "w_hh", tn, G * H)
    cdef void* pbi = buffer_of(b_ih, "b_ih", tn, G)
    cdef void* pbh = buffer_of(b_hh, "b_hh", tn, G)
    cdef void* pp = buffer_of(peephole, "peephole", tn, 3 * H, True)
    cdef void* ph = buffer_of(h, "h", tn, <Py_ssize_t>B * H, True)
    cdef void* pc = buffer_of(c, "c", tn, <Py_ssize_t>B * H, True)
    cdef void* pho = writable_buffer_of(h_out, "h_out", tn, <Py_ssize_t>B * H)
    cdef void* pco = writable_buffer_of(c_out, "c_out", tn, <Py_ssize_t>B * H)
    cdef void* pg = writable_buffer_of(gates, "gates", tn, B * G)
    # Without the GIL: threads serving one model step in parallel.
    with nogil:
        clstm_blas_enter()
        if tn == cnp.NPY_FLOAT32:
            layer_step(B, I, H, <float*>px, <float*>pwi, <float*>pwh, <float*>pbi,
                       <float*>pbh, <float*>pp, <float*>ph, <float*>pc, <float*>pho,
                       <float*>pco, <float*>pg)
        else:
            layer_step(B, I, H, <double*>px, <double*>pwi, <double*>pwh, <double*>pbi,
                       <double*>pbh, <double*>pp, <double*>ph, <double*>pc, <double*>pho,
                       <double*>pco, <double*>pg)
        clstm_blas_leave()


cdef void gru_layer_step(int B, int I, int H, const floating* x, const floating* w_ih,
                         const floating* w_hh, const floating* b_ih, const floating* b_hh,
                         const floating* h, floating* h_out, floating* gates,
                         floating* gh) noexcept nogil:
    """One GRU time step of one layer, for serving: the two products (GEMV for one row:
    no GEMM packing, no thread team) and the fused gate loop, nothing saved. ``gates``
    and ``gh`` are (B, 3H) scratch; ``h`` may be NULL for a zero state (then gh is zero,
    as in the sequence driver)."""
    cdef int G = 3 * H
    if B == 1:
        gemv_rows(G, I, <floating>1, w_ih, I, x, <floating>0, gates)
    else:
        gemm(False, True, B, G, I, <floating>1, x, I, w_ih, I, <floating>0, gates, G)
    if h == NULL:
        memset(gh, 0, <size_t>B * G * sizeof(floating))
    elif B == 1:
        gemv_rows(G, H, <floating>1, w_hh, H, h, <floating>0, gh)
    else:
        gemm(False, True, B, G, H, <floating>1, h, H, w_hh, H, <floating>0, gh, G)
    gru_gates_forward(B, H, gates, gh, b_ih, b_hh, h, h_out)


def gru_step(int B, int I, int H, x, w_ih, w_hh, b_ih, b_hh, h, h_out, workspace):
    """One GRU time step of one layer (inference): fills ``h_out`` (B, H).

    ``b_ih``/``b_hh`` are None without bias, ``h`` None for a zero state; ``workspace``
    is 6·B·H scratch of the same dtype.
    """
    if not sizes_ok(1, B, I, H):
        raise ValueError(f"expected positive sizes that fit BLAS's int, got B={B}, I={I}, H={H}")
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t G = 3 * <Py_ssize_t>H
    cdef void* px = buffer_of(x, "x", tn, <Py_ssize_t>B * I)
    cdef void* pwi = buffer_of(w_ih, "w_ih", tn, G * I)
    cdef void* pwh = buffer_of(w_hh, "w_hh", tn, G * H)
    cdef void* pbi = buffer_of(b_ih, "b_ih", tn, G, True)
    cdef void* pbh = buffer_of(b_hh, "b_hh", tn, G, True)
    cdef void* ph = buffer_of(h, "h", tn, <Py_ssize_t>B * H, True)
    cdef void* pho = writable_buffer_of(h_out, "h_out", tn, <Py_ssize_t>B * H)
    cdef void* pws = writable_buffer_of(workspace, "workspace", tn, 2 * B * G)
    if (pbi == NULL) != (pbh == NULL):
        raise ValueError("b_ih and b_hh: expected both or neither")
    # Without the GIL: threads serving one model step in parallel.
    with nogil:
        clstm_blas_enter()
        if tn == cnp.NPY_FLOAT32:
            gru_layer_step(B, I, H, <float*>px, <float*>pwi, <float*>pwh, <float*>pbi,
                           <float*>pbh, <float*>ph, <float*>pho, <float*>pws,
                           <float*>pws + B * G)
        else:
            gru_layer_step(B, I, H, <double*>px, <double*>pwi, <double*>pwh, <double*>pbi,
                           <double*>pbh, <double*>ph, <double*>pho, <double*>pws,
                           <double*>pws + B * G)
        clstm_blas_leave()


def matmul(a, b, out, bint trans_a=False, bint trans_b=False, bint accumulate=False,
           int num_threads=1):
    """out (m×n) := op(a)·op(b) (+ out when ``accumulate``), on the kernels' thread team.

    For the layers around the LSTM (Dense), so that all of clstm's arithmetic runs on one
    pool of threads: NumPy's ``@`` would use NumPy's own BLAS threads, which compete with
    the kernels' OpenMP team. All three arrays 2-D, C-contiguous, of one dtype.
    """
    cdef int tn = typenum_of(a)
    for name, arr in (("a", a), ("b", b), ("out", out)):
        if not cnp.PyArray_Check(arr) or (<cnp.ndarray>arr).ndim != 2:
            raise ValueError(f"matmul: expected a 2-D array for {name}")
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    if kb != k or out.shape[0] != m or out.shape[1] != n:
        raise ValueError(f"matmul: shapes do not fit: op(a) {m}×{k}, op(b) {kb}×{n}, "
                         f"out {out.shape[0]}×{out.shape[1]}")
    cdef void* pa = buffer_of(a, "a", tn, <Py_ssize_t>m * k)
    cdef void* pb = buffer_of(b, "b", tn, <Py_ssize_t>k * n)
    cdef void* pc = writable_buffer_of(out, "out", tn, <Py_ssize_t>m * n)
    if m == 0 or n == 0:
        return
    if k == 0:
        if not accumulate:
            out.fill(0)
        return
    cdef int lda = m if trans_a else k
    cdef int ldb = k if trans_b else n
    num_threads = clstm_team_threads(num_threads)
    with nogil:
        clstm_blas_enter()
        if tn == cnp.NPY_FLOAT32:
            parallel_gemm(num_threads, trans_a, trans_b, m, n, k, <float>1, <float*>pa, lda,
                          <float*>pb, ldb, <float>(1 if accumulate else 0), <float*>pc, n)
        else:
            parallel_gemm(num_threads, trans_a, trans_b, m, n, k, <double>1, <double*>pa,
                          lda, <double*>pb, ldb, <double>(1 if accumulate else 0),
                          <double*>pc, n)
        clstm_blas_leave()


def sigmoid(x, out):
    """out := σ(x) with the kernels' own vectorised exp (for accuracy tests)."""
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    cdef void* px = buffer_of(x, "x", tn, n)
    cdef void* po = writable_buffer_of(out, "out", tn, n)
    if tn == cnp.NPY_FLOAT32:
        clstm_sigmoid_f32(n, <float*>px, <float*>po)
    else:
        clstm_sigmoid_f64(n, <double*>px, <double*>po)


def tanh(x, out):
    """out := tanh(x) with the kernels' own vectorised exp (for accuracy tests)."""
    cdef int tn = typenum_of(x)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    cdef void* px = buffer_of(x, "x", tn, n)
    cdef void* po = writable_buffer_of(out, "out", tn, n)
    if tn == cnp.NPY_FLOAT32:
        clstm_tanh_f32(n, <float*>px, <float*>po)
    else:
        clstm_tanh_f64(n, <double*>px, <double*>po)
