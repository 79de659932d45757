/* Process-wide state of the kernels that is not arithmetic: the BLAS thread guard, the
 * fork rule, and the per-call control block through which a long call notices Ctrl-C
 * (and through which the team agrees on when to stop). See runtime.c. */
#ifndef CLSTM_RUNTIME_H
#define CLSTM_RUNTIME_H

#include <Python.h>

/* ---- BLAS thread guard ------------------------------------------------------------
 * While any kernel call runs, SciPy's OpenBLAS is held to one thread (its own workers
 * beside the OpenMP team oversubscribe the cores). Reference counted, so that calls
 * from several Python threads at once neither restore too early nor save a count that
 * another call set: the first call in saves and sets 1, the last one out restores. */
void clstm_blas_register(void *set_threads, void *get_threads);
void clstm_blas_enter(void);
void clstm_blas_leave(void);

/* ---- fork ---------------------------------------------------------------------------
 * GNU OpenMP cannot restart its thread pool in a child made by fork(): the child's
 * first parallel region waits forever for workers that were not copied. So once this
 * process has run a team of more than one thread, a forked child runs every kernel on
 * one thread (pthread_atfork handler). clstm_team_threads(n) is the count to use. */
int clstm_team_threads(int requested);
int clstm_fork_limited(void);

/* ---- per-call control -------------------------------------------------------------
 * One per kernel call from Python (NULL from the C API: no signal checks). The caller's
 * thread (OpenMP thread 0) checks Python's signal handlers about every 50 ms; when one
 * raises, the exception is kept here and the team stops at a step all threads agree on:
 * a thread at iteration t stops when t >= stop_step. Thread 0 sets stop_step to its own
 * iteration + 1 before the step's barrier, so every thread reads the same decision at
 * the top of the next iteration (see runtime.c). */
typedef struct {
    volatile int stop_step;      /* INT_MAX while running */
    int check_signals;           /* this call runs in Python's main thread */
    double next_check;           /* monotonic seconds of the next signal check */
    PyObject *exc_type, *exc_value, *exc_tb;
} clstm_call;

void clstm_call_init(clstm_call *call, int check_signals);
/* Whether the calling thread, at iteration t of a loop whose threads meet at a barrier
 * every iteration, must leave the loop; consistent across the team. */
int clstm_call_stop_at(clstm_call *call, int t);
/* Whether the call has been asked to stop at all (loops without per-step barriers, and
 * between blocks of a large GEMM). Thread 0 also checks the signals here. */
int clstm_call_stopped(clstm_call *call);

double clstm_monotonic(void);

int clstm_all_finite_f32(Py_ssize_t n, const float *a);
int clstm_all_finite_f64(Py_ssize_t n, const double *a);

#endif
