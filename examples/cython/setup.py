"""Build the lstm_embed example: ``python setup.py build_ext --inplace``.

Nothing here points at clstm. Cython finds ``clstm/kernels.pxd`` the way Python finds
``clstm``: on ``sys.path``, next to the installed package. There is nothing to link
either: at import time the extension takes the function pointers from
``clstm.kernels.__pyx_capi__``.
"""
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup


def openmp_flags():
    """(compile, link) flags for OpenMP, or none when the compiler lacks it.

    OpenMP is only for this module's own prange; without it the prange runs serially,
    which is slower but still correct (Apple's clang, for one, has no OpenMP by default).
    """
    if sys.platform == "win32":
        return ["/openmp"], []
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\n"
                    "int main(void) { return omp_get_max_threads() < 1; }\n")
        try:
            ok = subprocess.run(cc + ["-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    return (["-fopenmp"], ["-fopenmp"]) if ok else ([], [])


compile_args, link_args = openmp_flags()
setup(
    name="lstm-embed",
    ext_modules=cythonize(
        [Extension("lstm_embed", ["lstm_embed.pyx"],
                   extra_compile_args=compile_args, extra_link_args=link_args)],
        compiler_directives={"language_level": 3},
    ),
)
