/* Hide the CPU's newer vector extensions from every library in one process, so that the
 * code an older CPU runs can be measured and tested on a newer one: clstm's kernels,
 * OpenBLAS, PyTorch (ATen, MKL, oneDNN) and ONNX Runtime's MLAS all choose their kernels
 * from the CPUID instruction, and only some of them have a switch to choose lower.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, Linux 4.12; Intel since Ivy
 * Bridge, AMD since Zen 4 on recent kernels, "cpuid_fault" in /proc/cpuinfo) makes the
 * CPUID instruction raise SIGSEGV in user space.  This library's SIGSEGV handler runs
 * the instruction itself with faulting switched off for that moment, clears the feature
 * bits of the hidden level and steps over it.  The setting is per thread, inherited by
 * threads and forks created later and dropped by execve, so it has to be switched on
 * before anything else runs: the library is meant for LD_PRELOAD, with the level in
 * CLSTM_HIDE_CPU, and a child process that inherits both hides the same features again.
 *
 *     LD_PRELOAD=.../clstm/_hide_cpu*.so CLSTM_HIDE_CPU=avx2 python ...
 *
 * Levels: "avx2" hides AVX-512 (an AVX2 + FMA server: Zen 3, Haswell to Cascade Lake
 * without AVX-512); "generic" hides AVX, AVX2, FMA and F16C as well (an SSE4.2 CPU).
 * What is not hidden: XGETBV still reports the ZMM state enabled (no library uses
 * AVX-512 without the CPUID bit), and code that executed CPUID before this library's
 * constructor (the dynamic loader's own choice of memcpy) keeps its choice.
 *
 * The library takes no part in a process that does not ask for it (CLSTM_HIDE_CPU unset):
 * its sigaction/signal wrappers then pass straight through.  When it is active, a
 * SIGSEGV handler the process installs later (Python's faulthandler, for one) is kept
 * aside and called for every SIGSEGV that is not a hidden CPUID, so crashes still report
 * as they would. No Python API here: the library must load into any program a Python
 * process starts. bench/isa.py (`--isa`) and tests/test_hide_cpu.py use it. */
#if defined(__linux__) && defined(__x86_64__)
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_GET_CPUID
#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#endif

enum { LEVEL_NONE = 0, LEVEL_AVX2 = 1, LEVEL_GENERIC = 2 };

static int hidden_level = LEVEL_NONE;
/* 1 active, 0 not asked for, -errno when asked for and CPUID faulting is unavailable */
static int hide_status = 0;
static volatile long cpuid_traps = 0;
/* the SIGSEGV action the process asked for since this library took the signal */
static struct sigaction chained_action;

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static sigaction_fn real_sigaction(void)
{
    static sigaction_fn fn = NULL;
    if (fn == NULL)
        fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return fn;
}

static long set_cpuid_enabled(int enabled)
{
    return syscall(SYS_arch_prctl, ARCH_SET_CPUID, (unsigned long)enabled);
}

/* Bits of CPUID's answers that name the hidden extensions. */
static void hide_bits(unsigned leaf, unsigned subleaf, unsigned *eax, unsigned *ebx,
                      unsigned *ecx, unsigned *edx)
{
    if (leaf == 1 && hidden_level >= LEVEL_GENERIC) {
        *ecx &= ~((1u << 12) | (1u << 28) | (1u << 29)); /* FMA, AVX, F16C */
    } else if (leaf == 7 && subleaf == 0) {
        /* AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
        *ebx &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) |
                  (1u << 28) | (1u << 30) | (1u << 31));
        /* AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        *ecx &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, FP16 */
        *edx &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
        if (hidden_level >= LEVEL_GENERIC)
            *ebx &= ~(1u << 5); /* AVX2 */
    } else if (leaf == 7 && subleaf == 1) {
        *eax &= ~(1u << 5); /* AVX512 BF16 */
        if (hidden_level >= LEVEL_GENERIC)
            *eax &= ~(1u << 4); /* AVX-VNNI */
    } else if (leaf == 0xD && subleaf == 0) {
        *eax &= ~((1u << 5) | (1u << 6) | (1u << 7)); /* opmask, ZMM state */
        if (hidden_level >= LEVEL_GENERIC)
            *eax &= ~(1u << 2); /* YMM state */
    }
}

static void pass_on(int sig, siginfo_t *info, void *context)
{
    struct sigaction next = chained_action;
    if (next.sa_handler == SIG_DFL || next.sa_handler == SIG_IGN) {
        /* the default action: put it back and return; the faulting instruction runs again
           and the kernel ends the process as it would have without this library */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction()(sig, &dfl, NULL);
        return;
    }
    if (next.sa_flags & SA_SIGINFO)
        next.sa_sigaction(sig, info, context);
    else
        next.sa_handler(sig);
}

static void on_sigsegv(int sig, siginfo_t *info, void *context)
{
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *regs = uc->uc_mcontext.gregs;
    /* CPUID faulting raises a general protection fault: si_code SI_KERNEL, and the
       instruction at RIP was just fetched, so it is readable */
    if (info->si_code == SI_KERNEL) {
        const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
        if (ip[0] == 0x0F && ip[1] == 0xA2) {
            int saved_errno = errno;
            unsigned leaf = (unsigned)regs[REG_RAX], subleaf = (unsigned)regs[REG_RCX];
            unsigned eax, ebx, ecx, edx;
            set_cpuid_enabled(1);
            __cpuid_count(leaf, subleaf, eax, ebx, ecx, edx);
            set_cpuid_enabled(0);
            hide_bits(leaf, subleaf, &eax, &ebx, &ecx, &edx);
            /* CPUID writes 32-bit registers: the upper halves become zero */
            regs[REG_RAX] = eax;
            regs[REG_RBX] = ebx;
            regs[REG_RCX] = ecx;
            regs[REG_RDX] = edx;
            regs[REG_RIP] += 2;
            __atomic_add_fetch(&cpuid_traps, 1, __ATOMIC_RELAXED);
            errno = saved_errno;
            return;
        }
    }
    pass_on(sig, info, context);
}

/* While active, the process's own SIGSEGV actions are kept aside, not installed. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (sig != SIGSEGV || hide_status != 1)
        return real_sigaction()(sig, act, old);
    struct sigaction previous = chained_action;
    if (act != NULL)
        chained_action = *act;
    if (old != NULL)
        *old = previous;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler)
{
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void hide_cpu_from_environment(void)
{
    const char *want = getenv("CLSTM_HIDE_CPU");
    if (want == NULL || *want == '\0')
        return;
    if (strcmp(want, "avx2") == 0) {
        hidden_level = LEVEL_AVX2;
    } else if (strcmp(want, "generic") == 0) {
        hidden_level = LEVEL_GENERIC;
    } else {
        static const char msg[] = "clstm hide_cpu: CLSTM_HIDE_CPU must be avx2 or generic; "
                                  "nothing hidden\n";
        hide_status = -EINVAL;
        (void)!write(2, msg, sizeof msg - 1);
        return;
    }
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_sigsegv;
    act.sa_flags = SA_SIGINFO;
    sigemptyset(&act.sa_mask);
    if (real_sigaction()(SIGSEGV, &act, &chained_action) != 0) {
        hide_status = -errno;
        return;
    }
    if (set_cpuid_enabled(0) != 0) {
        static const char msg[] = "clstm hide_cpu: this CPU or kernel has no CPUID "
                                  "faulting (arch_prctl ARCH_SET_CPUID); nothing hidden\n";
        hide_status = -errno;
        real_sigaction()(SIGSEGV, &chained_action, NULL);
        hidden_level = LEVEL_NONE;
        (void)!write(2, msg, sizeof msg - 1);
        return;
    }
    hide_status = 1;
}

int clstm_hide_cpu_status(void) { return hide_status; }
int clstm_hide_cpu_level(void) { return hidden_level; }
long clstm_hide_cpu_traps(void) { return __atomic_load_n(&cpuid_traps, __ATOMIC_RELAXED); }

#else /* not Linux x86-64: nothing to hide with, and nothing hidden */
int clstm_hide_cpu_status(void) { return -38; /* ENOSYS */ }
int clstm_hide_cpu_level(void) { return 0; }
long clstm_hide_cpu_traps(void) { return 0; }
#endif
