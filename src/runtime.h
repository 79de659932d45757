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

/* ---- a busy machine: the team shrinks ----------------------------------------------
 * Where another process holds a core, a team member shares it and is descheduled for
 * time slices; every region of a call then waits for it at its end, and the idle members
 * spin on the cores the caller needs. So the split regions time each member against its
 * CPU time (clstm_team_clock: what it lost while not running), and after a call whose
 * team lost too much, clstm_team_threads gives one thread for the next calls: 8, then
 * 16 ... 256 calls while every retry is late again (a retry costs up to 2-3 calls' time
 * under load: after 8 calls it is 1/9 of the time, at 256 1/257); one team on time ends
 * the pause. */
typedef struct {
    double start;          /* monotonic seconds when the region began (thread 0) */
    volatile int late;     /* a member lost more than the allowed share */
} clstm_team_clock;
void clstm_team_clock_start(clstm_team_clock *clock);
/* This thread's CPU seconds: its reading at the start of its work, for ... */
double clstm_thread_cpu(void);
/* ... each member at the end of its work in the region. */
void clstm_team_clock_check(clstm_team_clock *clock, double cpu_at_start);
/* The overlapped products (src/kernels.pyx): thread 0 walks the time steps, a helper
 * computes the whole-sequence products beside it. A call of a batch of one is short
 * (S1: 0.1-0.2 ms), and a helper that another process keeps off the CPU stalls it for a
 * time slice (milliseconds): rare on time, yet each costs 10-50 calls' worth. So each
 * overlapped call reports its time and what thread 0 lost to the helper (waiting for
 * it, or descheduled itself); a call that lost more than the allowed share of its time
 * (as the team clock's, clstm_team_set_max_lost_share) and more than 20 µs makes the
 * next 64 calls that would overlap run on one thread; when the call after them (the
 * retry) is late too, 128, and so on up to 4096 (beside a busy loop on one of 2 cores a
 * retry is nearly always late: the helper, asleep by then, must be woken on a busy
 * machine, 5-10 ms, which 4096 calls of 0.1-0.3 ms make 1-2%); each overlapped call on
 * time shortens the next pause by one call (so that the pauses stay long while late calls
 * keep coming). With no pause remembered, the first pause needs two late calls in a row
 * (clstm_overlap_set_strikes), so that a single stall on a quiet machine costs nothing
 * more. */
int clstm_overlap_allowed(void);
void clstm_overlap_report(double elapsed, double lost);
/* Calls left that skip the overlap (tests); clstm_team_reset ends the pause. */
int clstm_overlap_calls_skipped(void);
/* Late calls in a row that start the first pause (2; 1: the first late call does);
 * returns the previous value. A remembered pause (a retry late) doubles at once. */
int clstm_overlap_set_strikes(int calls);
/* After the region, thread 0: whether the team was late, which sets or ends the pause:
 * 0 on time; 1 a late row split (the first pause starts at the second in a row); 2 sure
 * evidence, the units split leaving for one thread (the pause starts at once). */
void clstm_team_report(int late);
/* The share of a region's time a member may lose (default 0.25; below 0: always late,
 * above 1: never), and the least time lost that counts (seconds). Returns the old share. */
double clstm_team_set_max_lost_share(double share);
/* Calls left on one thread (tests, benchmarks); clstm_team_reset ends the pause. */
int clstm_team_calls_on_one_thread(void);
void clstm_team_reset(void);
/* The pause's state (calls left, length of the last pause), to save and put back: A/B
 * timings that interleave settings give each its own. */
void clstm_team_pause_get(int *calls_left, int *pause);
void clstm_team_pause_set(int calls_left, int pause);

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

/* ---- row blocks handed over between threads -------------------------------------------
 * The row split runs each block of batch rows through all its steps on one thread, with
 * no barrier: rows never interact. A thread that the OS deschedules (another process on
 * its core) would make the whole call wait for its block, so a thread that has finished
 * its own block takes over the rest of a late one, one step at a time: step s of a block
 * runs only after step s - 1 is done, and on exactly one thread, whichever. `claimed`
 * counts the steps started, `done` those finished (stored with release order after the
 * step's writes, loaded with acquire order before the next step reads them). One cache
 * line per block, so the owners' stores do not collide. */
typedef struct {
    int claimed;
    int done;
    char pad[56];
} clstm_row_block;

/* The owner, before step s (its own step s - 1 done): 1 when it runs step s, 0 when
 * another thread has taken the block over (the owner then leaves it for good). */
int clstm_block_take(clstm_row_block *b, int s);
/* After step s (all its writes made). */
void clstm_block_done(clstm_row_block *b, int s);
/* A thread with nothing left of its own, on another thread's block of `steps` steps:
 * the step it now owns (it continues with clstm_block_take from the next one), -1 when
 * the block is finished, -2 while a step of it is running (try again). */
int clstm_block_take_over(clstm_row_block *b, int steps);
/* A wait in a loop: spins briefly, then yields the core (the thread waited for may be
 * the one the OS wants to run there). `spins` counts the rounds, starting at 0. */
void clstm_wait_a_little(int *spins);
/* Sleep (tests: a thread made late, losing wall time but no CPU time, as one that the OS
 * has descheduled). */
void clstm_sleep(double seconds);
/* The steps taken over from another thread (all calls, all threads): tests see that a
 * late thread's rows were finished by another one. */
void clstm_count_taken_over(int steps);
long clstm_taken_over_steps(void);

/* ---- counters between the recurrence and a helper ------------------------------------
 * When the batch is too small to split, a second thread computes the whole-sequence
 * products (input projection; dX, dW_ih, dW_hh, db) in chunks of steps beside the
 * recurrence (src/kernels.pyx, "overlapped products"). The two share counters: steps
 * finished, chunks claimed, chunks done, whose turn it is to add into a weight gradient.
 * One cache line each, so the two threads' stores do not collide. */
typedef struct {
    int value;
    char pad[60];
} clstm_counter;

/* Load with acquire order: what was written before the matching store is visible. */
int clstm_counter_get(clstm_counter *c);
/* Store with release order, after the writes it publishes. */
void clstm_counter_set(clstm_counter *c, int value);
/* expected -> expected + 1 if it still holds expected: 1 when this thread claimed it. */
int clstm_counter_claim(clstm_counter *c, int expected);
/* Waiting beside the other thread of an overlapped region. Each of the two publishes the
 * core it runs on (clstm_beside_begin, then clstm_beside_here now and then). A wait on
 * the other thread spins while the two run on different cores (the waits are short, and
 * yielding there would hand the core to whatever else runs on it, for up to a time
 * slice), and yields at once when they share one (spinning would keep the awaited thread
 * from running). Unknown cores: clstm_wait_a_little. Not measured apart: the stalls seen
 * under load came from libgomp's spinning (see caller_done in src/kernels.pyx). */
void clstm_beside_begin(clstm_counter *mine, clstm_counter *other);
void clstm_beside_here(void);
void clstm_beside_end(void);
void clstm_wait_beside(int *spins);
/* The chunks the caller's thread (thread 0) ran itself (all calls): tests see that a
 * late helper's chunks were done without it. */
void clstm_count_caller_chunks(int chunks);
long clstm_caller_chunks(void);

int clstm_all_finite_f32(Py_ssize_t n, const float *a);
int clstm_all_finite_f64(Py_ssize_t n, const double *a);

#endif
