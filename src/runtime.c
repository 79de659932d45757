/* Process-wide state of the kernels that is not arithmetic (declared in runtime.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE      /* sched_getcpu */
#endif
#include "runtime.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <pthread.h>
#include <time.h>
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#ifdef _OPENMP
#include <omp.h>
#define THREAD_NUM() omp_get_thread_num()
#else
#define THREAD_NUM() 0
#endif

/* ---- BLAS thread guard -------------------------------------------------------------- */

typedef void (*set_threads_fn)(int);
typedef int (*get_threads_fn)(void);

static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static set_threads_fn blas_set = NULL;
static get_threads_fn blas_get = NULL;
static int guard_users = 0;      /* kernel calls in flight */
static int guard_saved = 0;      /* BLAS's count before the first of them */

void clstm_blas_register(void *set_threads, void *get_threads)
{
    pthread_mutex_lock(&guard_lock);
    blas_set = (set_threads_fn)set_threads;
    blas_get = (get_threads_fn)get_threads;
    pthread_mutex_unlock(&guard_lock);
}

void clstm_blas_enter(void)
{
    pthread_mutex_lock(&guard_lock);
    if (guard_users++ == 0 && blas_set != NULL && blas_get != NULL) {
        guard_saved = blas_get();
        if (guard_saved > 1)
            blas_set(1);
    }
    pthread_mutex_unlock(&guard_lock);
}

void clstm_blas_leave(void)
{
    pthread_mutex_lock(&guard_lock);
    if (guard_users > 0 && --guard_users == 0) {
        if (guard_saved > 1 && blas_set != NULL)
            blas_set(guard_saved);
        guard_saved = 0;
    }
    pthread_mutex_unlock(&guard_lock);
}

/* ---- fork ----------------------------------------------------------------------------- */

static volatile int team_started = 0;    /* a team of > 1 thread may have run here */
static volatile int forked_child = 0;    /* forked after that: one thread from now on */

static void after_fork_in_child(void)
{
    /* Only the forking thread exists in the child: a guard held by another thread at
     * the fork would never be released, and its calls are not in flight here. BLAS's
     * count in the child is whatever the parent had at the fork, so nothing to restore. */
    pthread_mutex_init(&guard_lock, NULL);
    guard_users = 0;
    guard_saved = 0;
    if (team_started)
        forked_child = 1;
}

__attribute__((constructor)) static void runtime_init(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

/* Calls left to run on one thread, and the length of the next such pause. Updated
 * without a lock by concurrent calls: a lost update only shortens or lengthens a pause. */
static int busy_calls_left = 0;
static int busy_pause = 0;
/* Late row splits in a row, with no pause running. One alone starts nothing: on a
 * virtual machine a single call loses a time slice now and then to the host (and in a
 * benchmark, to another library's threads still spinning), and a pause of 8 calls on
 * one thread after each such call halved 2-thread speed on a quiet machine. */
static int busy_strikes = 0;
#define STRIKES_BEFORE_PAUSE 2
#define FIRST_PAUSE_CALLS 8
#define LONGEST_PAUSE_CALLS 256

int clstm_team_threads(int requested)
{
    if (requested <= 1)
        return 1;
    if (forked_child)
        return 1;
    if (__atomic_load_n(&busy_calls_left, __ATOMIC_RELAXED) > 0) {
        __atomic_fetch_sub(&busy_calls_left, 1, __ATOMIC_RELAXED);
        return 1;
    }
    team_started = 1;
    return requested;
}

/* ---- a busy machine: the team shrinks -------------------------------------------------- */

static double max_lost_share = 0.25;
/* A descheduled thread is gone for a time slice, milliseconds (3 ms on Linux's EEVDF
 * by default); waking a sleeping thread takes tens of microseconds, a slow virtual
 * machine's wake-up some hundreds, which must not count. */
#define MIN_LOST_S 0.001

void clstm_team_clock_start(clstm_team_clock *clock)
{
    clock->start = clstm_monotonic();
    clock->late = 0;
}

double clstm_thread_cpu(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return -1.0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void clstm_team_clock_check(clstm_team_clock *clock, double cpu_at_start)
{
    double elapsed = clstm_monotonic() - clock->start;
    double cpu = clstm_thread_cpu();
    double lost;
    if (cpu < 0 || cpu_at_start < 0)
        return;
    lost = elapsed - (cpu - cpu_at_start);   /* not running: descheduled, or not yet woken */
    if (max_lost_share < 0 || (lost > max_lost_share * elapsed && lost > MIN_LOST_S))
        clock->late = 1;
}

/* The overlapped products under load (see runtime.h). */
static int overlap_skip_left = 0;        /* calls left that skip the overlap */
static int overlap_skip_len = 0;         /* the last such pause, less the calls on time since */
static int overlap_strikes = 0;          /* late calls in a row while no pause is remembered */
static int overlap_strikes_to_pause = 2; /* how many start the first pause */
#define OVERLAP_FIRST_SKIP 64
#define OVERLAP_LONGEST_SKIP 4096
#define OVERLAP_MIN_LOST_S 0.00002

int clstm_overlap_allowed(void)
{
    if (__atomic_load_n(&overlap_skip_left, __ATOMIC_RELAXED) > 0) {
        __atomic_fetch_sub(&overlap_skip_left, 1, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

void clstm_overlap_report(double elapsed, double lost)
{
    /* Updated without a lock by concurrent calls: a lost update only changes a pause. */
    int len;
    if (max_lost_share >= 0 && !(lost > max_lost_share * elapsed && lost > OVERLAP_MIN_LOST_S)) {
        /* On time: the next pause one call shorter. Not ended at once: under load most
         * overlapped calls are on time (1 in ~15 stalls, beside a busy loop), and a pause
         * back at 64 calls after each would leave a stall every ~80 calls. */
        len = __atomic_load_n(&overlap_skip_len, __ATOMIC_RELAXED);
        if (len > 0)
            __atomic_store_n(&overlap_skip_len, len - 1, __ATOMIC_RELAXED);
        __atomic_store_n(&overlap_strikes, 0, __ATOMIC_RELAXED);
        return;
    }
    len = __atomic_load_n(&overlap_skip_len, __ATOMIC_RELAXED);
    /* With no pause remembered, one late call alone starts nothing (as the row split's
     * team, clstm_team_report): on the 2-core VM a wake-up of the helper now and then
     * loses a few tens of µs even on a quiet machine, and in the benchmark's rotation the
     * other libraries' spinning pools did so at the start of clstm's samples; 64 calls
     * on one thread after each cost more than the stall. The second in a row starts it. */
    if (len == 0 && __atomic_add_fetch(&overlap_strikes, 1, __ATOMIC_RELAXED)
                        < overlap_strikes_to_pause)
        return;
    __atomic_store_n(&overlap_strikes, 0, __ATOMIC_RELAXED);
    len = len == 0 ? OVERLAP_FIRST_SKIP
          : len * 2 > OVERLAP_LONGEST_SKIP ? OVERLAP_LONGEST_SKIP : len * 2;
    __atomic_store_n(&overlap_skip_len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&overlap_skip_left, len, __ATOMIC_RELAXED);
}

int clstm_overlap_set_strikes(int calls)
{
    const int old = overlap_strikes_to_pause;
    if (calls >= 1)
        overlap_strikes_to_pause = calls;
    return old;
}

int clstm_overlap_calls_skipped(void)
{
    return __atomic_load_n(&overlap_skip_left, __ATOMIC_RELAXED);
}

void clstm_team_report(int late)
{
    int pause;
    if (!late) {
        __atomic_store_n(&busy_pause, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&busy_strikes, 0, __ATOMIC_RELAXED);
        return;
    }
    pause = __atomic_load_n(&busy_pause, __ATOMIC_RELAXED);
    /* A late row split starts the first pause only as the second in a row; a retry
     * after a pause that is late again (pause > 0), or a units split that left
     * (late == 2), doubles or starts it at once. */
    if (pause == 0 && late == 1 &&
        __atomic_add_fetch(&busy_strikes, 1, __ATOMIC_RELAXED) < STRIKES_BEFORE_PAUSE)
        return;
    __atomic_store_n(&busy_strikes, 0, __ATOMIC_RELAXED);
    pause = pause == 0 ? FIRST_PAUSE_CALLS
            : pause * 2 > LONGEST_PAUSE_CALLS ? LONGEST_PAUSE_CALLS : pause * 2;
    __atomic_store_n(&busy_pause, pause, __ATOMIC_RELAXED);
    __atomic_store_n(&busy_calls_left, pause, __ATOMIC_RELAXED);
}

double clstm_team_set_max_lost_share(double share)
{
    double old = max_lost_share;
    max_lost_share = share;
    return old;
}

int clstm_team_calls_on_one_thread(void)
{
    return __atomic_load_n(&busy_calls_left, __ATOMIC_RELAXED);
}

void clstm_team_pause_get(int *calls_left, int *pause)
{
    *calls_left = __atomic_load_n(&busy_calls_left, __ATOMIC_RELAXED);
    *pause = __atomic_load_n(&busy_pause, __ATOMIC_RELAXED);
}

void clstm_team_pause_set(int calls_left, int pause)
{
    __atomic_store_n(&busy_calls_left, calls_left, __ATOMIC_RELAXED);
    __atomic_store_n(&busy_pause, pause, __ATOMIC_RELAXED);
}

void clstm_team_reset(void)
{
    __atomic_store_n(&overlap_skip_left, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&overlap_skip_len, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&overlap_strikes, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&busy_calls_left, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&busy_pause, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&busy_strikes, 0, __ATOMIC_RELAXED);
}

int clstm_fork_limited(void) { return forked_child; }

/* ---- per-call control ------------------------------------------------------------------ */

#define SIGNAL_CHECK_INTERVAL_S 0.05

double clstm_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The signal checks' clock: read at every step of thread 0, and 50 ms apart is all the
 * precision they need, so the coarse clock (the last tick, a few ms old) where there is
 * one: a plain load from the vDSO page instead of a timer read. */
static double signal_clock(void)
{
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    return clstm_monotonic();
}

void clstm_call_init(clstm_call *call, int check_signals)
{
    call->stop_step = INT_MAX;
    call->check_signals = check_signals;
    call->next_check = check_signals ? signal_clock() + SIGNAL_CHECK_INTERVAL_S : 0.0;
    call->exc_type = call->exc_value = call->exc_tb = NULL;
}

/* Thread 0 (the Python thread that made the call) runs Python's signal handlers when the
 * interval has passed; returns 1 when one raised (its exception is kept in the call). */
static int signal_raised(clstm_call *call)
{
    double now;
    PyGILState_STATE gil;
    int raised = 0;
    if (!call->check_signals || call->exc_type != NULL || THREAD_NUM() != 0)
        return 0;
    now = signal_clock();
    if (now < call->next_check)
        return 0;
    call->next_check = now + SIGNAL_CHECK_INTERVAL_S;
    gil = PyGILState_Ensure();
    if (PyErr_CheckSignals() != 0) {
        PyErr_Fetch(&call->exc_type, &call->exc_value, &call->exc_tb);
        raised = 1;
    }
    PyGILState_Release(gil);
    return raised;
}

int clstm_call_stop_at(clstm_call *call, int t)
{
    int stop;
    if (call == NULL)
        return 0;
    stop = t >= call->stop_step;
    /* Decided at iteration t, acted on at t + 1: a thread still at the top of iteration
     * t reads either INT_MAX or t + 1 and runs t either way; after the barrier of t,
     * every thread reads t + 1. */
    if (!stop && signal_raised(call))
        call->stop_step = t + 1;
    return stop;
}

int clstm_call_stopped(clstm_call *call)
{
    if (call == NULL)
        return 0;
    if (call->stop_step == INT_MAX && signal_raised(call))
        call->stop_step = 0;
    return call->stop_step != INT_MAX;
}

/* ---- row blocks handed over between threads ---------------------------------------- */

int clstm_block_take(clstm_row_block *b, int s)
{
    int expected = s;
    return __atomic_compare_exchange_n(&b->claimed, &expected, s + 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

void clstm_block_done(clstm_row_block *b, int s)
{
    __atomic_store_n(&b->done, s + 1, __ATOMIC_RELEASE);
}

int clstm_block_take_over(clstm_row_block *b, int steps)
{
    int s = __atomic_load_n(&b->claimed, __ATOMIC_ACQUIRE);
    if (s >= steps)
        return -1;
    /* Step s - 1 finished and s not started: nobody runs the block at this moment. */
    if (__atomic_load_n(&b->done, __ATOMIC_ACQUIRE) != s)
        return -2;
    return clstm_block_take(b, s) ? s : -2;
}

/* Spin this many rounds before yielding: a step of a few rows takes 1-100 µs, a
 * descheduled thread is gone for a time slice (milliseconds). */
#define SPINS_BEFORE_YIELD 2000

void clstm_wait_a_little(int *spins)
{
    if (*spins < SPINS_BEFORE_YIELD) {
        ++*spins;
        CPU_RELAX();
    } else {
        sched_yield();
    }
}

void clstm_sleep(double seconds)
{
    struct timespec ts;
    if (seconds <= 0)
        return;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)   /* a signal: sleep the rest */
        ;
}

static long taken_over_steps = 0;

void clstm_count_taken_over(int steps)
{
    if (steps > 0)
        __atomic_fetch_add(&taken_over_steps, (long)steps, __ATOMIC_RELAXED);
}

long clstm_taken_over_steps(void)
{
    return __atomic_load_n(&taken_over_steps, __ATOMIC_RELAXED);
}

/* ---- counters between the recurrence and a helper ---------------------------------- */

int clstm_counter_get(clstm_counter *c)
{
    return __atomic_load_n(&c->value, __ATOMIC_ACQUIRE);
}

void clstm_counter_set(clstm_counter *c, int value)
{
    __atomic_store_n(&c->value, value, __ATOMIC_RELEASE);
}

int clstm_counter_claim(clstm_counter *c, int expected)
{
    return __atomic_compare_exchange_n(&c->value, &expected, expected + 1, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* The calling thread's core and the other thread's, as published (core + 1; 0 unknown). */
static __thread clstm_counter *beside_mine = NULL;
static __thread clstm_counter *beside_other = NULL;

static int current_cpu(void)
{
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

void clstm_beside_begin(clstm_counter *mine, clstm_counter *other)
{
    beside_mine = mine;
    beside_other = other;
    clstm_beside_here();
}

void clstm_beside_here(void)
{
    if (beside_mine != NULL)
        __atomic_store_n(&beside_mine->value, current_cpu() + 1, __ATOMIC_RELAXED);
}

void clstm_beside_end(void)
{
    beside_mine = beside_other = NULL;
}

void clstm_wait_beside(int *spins)
{
    int here = current_cpu();
    int other = beside_other != NULL
                ? __atomic_load_n(&beside_other->value, __ATOMIC_RELAXED) - 1 : -1;
    if (beside_mine != NULL)
        __atomic_store_n(&beside_mine->value, here + 1, __ATOMIC_RELAXED);
    if (here < 0 || other < 0)
        clstm_wait_a_little(spins);
    else if (here == other)
        sched_yield();
    else
        CPU_RELAX();
}

static long caller_chunks = 0;

void clstm_count_caller_chunks(int chunks)
{
    if (chunks > 0)
        __atomic_fetch_add(&caller_chunks, (long)chunks, __ATOMIC_RELAXED);
}

long clstm_caller_chunks(void)
{
    return __atomic_load_n(&caller_chunks, __ATOMIC_RELAXED);
}

/* ---- finite checks ------------------------------------------------------------------ */

/* Whether no element is inf or NaN: its exponent bits are not all ones. Integer
 * operations, so that GCC vectorises the loop (a floating-point sum would be one long
 * dependency chain without -ffast-math). */
int clstm_all_finite_f32(Py_ssize_t n, const float *a)
{
    const uint32_t *bits = (const uint32_t *)a;
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        bad |= (uint32_t)((bits[i] & 0x7f800000u) == 0x7f800000u);
    return bad == 0;
}

int clstm_all_finite_f64(Py_ssize_t n, const double *a)
{
    const uint64_t *bits = (const uint64_t *)a;
    uint64_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        bad |= (uint64_t)((bits[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
    return bad == 0;
}
