"""Build clstm's compiled kernels.

Everything declarative lives in pyproject.toml; this file only describes the extension
module, because its compiler flags depend on the compiler at hand:

* OpenMP through ``-fopenmp`` when the compiler accepts it; otherwise the kernels build
  serially and a warning says so.
* ``-O3`` always; ``-march=native`` only when the user opts in with
  ``CLSTM_MARCH_NATIVE=1`` (a wheel built with it crashes on older CPUs). Without it the
  gate loops are still vectorised for AVX2 and AVX-512 through function multi-versioning
  chosen at run time (see src/gates.h).
* BLAS is not linked: the kernels call the BLAS that SciPy ships, through
  ``scipy.linalg.cython_blas``.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def compiler_accepts(flags):
    """Whether the C compiler compiles and links a small OpenMP program with ``flags``."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc.split()[0]) is None:
        return False
    source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        cmd = cc.split() + flags + [path, "-o", os.path.join(tmp, "probe")]
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return result.returncode == 0


compile_args = ["-O3", "-fno-math-errno"]
link_args = []
if sys.platform == "win32":
    compile_args = ["/O2", "/openmp"]
elif compiler_accepts(["-fopenmp"]):
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
else:
    warnings.warn(
        "clstm: the C compiler does not support OpenMP (-fopenmp); building the kernels "
        "without it, so they run on one thread (BLAS calls still use their own threads)."
    )
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

setup(
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
