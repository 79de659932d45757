"""Build clstm's compiled kernels.

Everything declarative lives in pyproject.toml; this file only describes the extension
module, because its compiler flags depend on the compiler at hand:

* OpenMP when the compiler setuptools builds with (``CC`` and friends honoured) compiles
  and links OpenMP code: ``-fopenmp`` (GCC, LLVM clang), ``-Xpreprocessor -fopenmp -lomp``
  (Apple's clang with libomp), ``/openmp`` (MSVC); otherwise the kernels build serially
  and a warning says so (``clstm.kernels.openmp_enabled()`` tells which build you have).
* ``-O3`` always; ``-march=native`` only when the user opts in with
  ``CLSTM_MARCH_NATIVE=1`` (a wheel built with it crashes on older CPUs). Without it the
  gate loops are still vectorised for AVX2 and AVX-512 through function multi-versioning
  chosen at run time (see src/gates.h).
* BLAS is not linked: the kernels call the BLAS that SciPy ships, through
  ``scipy.linalg.cython_blas``.
"""
import os
import platform
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = "#include <omp.h>\nint clstm_probe(void) { return omp_get_max_threads(); }\n"


def openmp_flags(compiler):
    """(compile, link) flags that give ``compiler`` OpenMP, and the reason when none do.

    ``compiler`` is the one setuptools builds the extension with (``CC``, ``CFLAGS``,
    ``CPPFLAGS``, ``LDFLAGS`` and ``LDSHARED`` applied), and the probe runs the steps the
    build runs: compile a file that includes omp.h and calls the runtime, link it as a
    shared object. GCC and LLVM clang take ``-fopenmp``; Apple's clang only passes it to
    the preprocessor and needs libomp (e.g. Homebrew's, found through CPPFLAGS/LDFLAGS).
    """
    if compiler.compiler_type == "msvc":
        return (["/openmp"], []), None
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    reason = None
    for compile_flags, link_flags in candidates:
        reason = compile_and_link(compiler, OPENMP_PROBE, compile_flags, link_flags)
        if reason is None:
            return (compile_flags, link_flags), None
    return None, reason


def compile_and_link(compiler, source, compile_flags, link_flags):
    """None when ``compiler`` compiles ``source`` and links it into a shared object, else
    the compiler's first error line. Its output goes to a file, not the build log."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        log = os.path.join(tmp, "probe.log")
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            with open(log, "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                objects = compiler.compile([path], output_dir=tmp,
                                           extra_postargs=compile_flags)
                compiler.link_shared_object(objects, os.path.join(tmp, "probe.so"),
                                            extra_postargs=link_flags)
        except Exception as exc:  # CompileError, LinkError, a missing executable
            with open(log) as f:
                lines = [line.strip() for line in f if line.strip()]
            errors = [line for line in lines if "error" in line.lower()]
            return (errors or lines or [str(exc) or type(exc).__name__])[0]
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return None


class BuildExt(build_ext):
    """build_ext that adds OpenMP when the compiler it builds with supports it."""

    def build_extensions(self):
        flags, reason = openmp_flags(self.compiler)
        if flags is None:
            cc = getattr(self.compiler, "compiler_so", ["?"])[0]
            warnings.warn(
                f"clstm: the C compiler ({cc}) does not build OpenMP code ({reason}); "
                "building the kernels WITHOUT OpenMP, so they run on one thread (BLAS "
                "calls still use their own threads). Install an OpenMP runtime (libgomp "
                "for GCC, libomp for clang) to get the threaded kernels.",
                stacklevel=1,
            )
        for ext in self.extensions:
            if ext.name == HIDE_CPU_MODULE:
                continue  # plain C, loaded with LD_PRELOAD into any program: no OpenMP
            if self.compiler.compiler_type == "msvc":
                ext.extra_compile_args = ["/O2"]
            if flags is not None:
                ext.extra_compile_args = ext.extra_compile_args + flags[0]
                ext.extra_link_args = ext.extra_link_args + flags[1]
        super().build_extensions()

    def build_extension(self, ext):
        # -j N (build_ext --parallel) compiles one extension's C files side by side; plain
        # setuptools only runs whole extensions in parallel, and there is one
        jobs = self.parallel if isinstance(self.parallel, int) else 0
        if jobs <= 1 or len(ext.sources) <= 1:
            return super().build_extension(ext)
        compile_all = self.compiler.compile

        def compile_parallel(sources, *args, **kwargs):
            with ThreadPoolExecutor(min(jobs, len(sources))) as pool:
                parts = pool.map(lambda src: compile_all([src], *args, **kwargs), sources)
                return [obj for part in parts for obj in part]

        self.compiler.compile = compile_parallel
        try:
            return super().build_extension(ext)
        finally:
            del self.compiler.compile


# OpenMP flags are added by BuildExt, once the compiler is known
compile_args = ["-O3", "-fno-math-errno"]
link_args = []
if os.environ.get("CLSTM_MARCH_NATIVE") == "1":
    compile_args.append("-march=native")

extensions = [
    Extension(
        "clstm.kernels",
        sources=["src/kernels.pyx", "src/gates.c", "src/gates_avx512.c", "src/gates_avx2.c",
                 "src/packed_gemm.c", "src/runtime.c"],
        include_dirs=[numpy.get_include(), "src"],
        depends=["src/gates.h", "src/gates_impl.h", "src/gates_simd.h",
                 "src/gates_simd_impl.h", "src/gates_flags.h", "src/packed_gemm.h",
                 "src/runtime.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

# A helper for the benchmark and the tests, not a Python module: LD_PRELOAD'ed with
# CLSTM_HIDE_CPU=avx2|generic, it hides AVX-512 (or AVX and above) from every library in
# the process through Linux's CPUID faulting (src/hide_cpu.c).  Linux x86-64 only.
HIDE_CPU_MODULE = "clstm._hide_cpu"
if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
    extensions.append(Extension(HIDE_CPU_MODULE, sources=["src/hide_cpu.c"],
                                extra_compile_args=["-O2"], libraries=["dl"]))

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        include_path=["."],  # so src/kernels.pyx pairs with the public clstm/kernels.pxd
        build_dir="build/cython",
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
