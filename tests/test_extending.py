"""Build examples/cython against the clstm that the tests import, and check it.

The example is a downstream Cython extension that cimports clstm's C API
(``clstm/kernels.pxd``). Building it proves that the .pxd ships with the installed
package and that Cython finds it on ``sys.path``; importing it proves that the C
signatures in the .pxd match those compiled into ``clstm.kernels`` (Cython checks them
against ``__pyx_capi__`` at import); running it checks the results against
``clstm.LSTM`` on the same weights.

One build per session (a module-scoped fixture), in a temporary copy of the example so
the source tree stays clean. Skipped when Cython, setuptools, the Python headers or a C
compiler is missing.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

import clstm

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cython"


def _cannot_compile():
    """Why C extensions cannot be built here, or None when they can (as far as we see)."""
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (Python.h) to build a C extension against"
    if sys.platform == "win32":
        return None  # setuptools finds MSVC itself, not on PATH: let the build try
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        return f"no C compiler: {cc.split()[0]!r} is not on PATH"
    return None


@pytest.fixture(scope="module")
def lstm_embed(tmp_path_factory):
    """The example extension, built in a temporary directory and imported."""
    pytest.importorskip("Cython", minversion="3.0",
                        reason="building the example needs Cython >= 3")
    pytest.importorskip("setuptools", reason="building the example needs setuptools")
    reason = _cannot_compile()
    if reason:
        pytest.skip(reason)
    if not (EXAMPLE / "lstm_embed.pyx").is_file():
        pytest.skip(f"the example sources are not here: {EXAMPLE}")

    build_dir = tmp_path_factory.mktemp("lstm_embed")
    shutil.copytree(EXAMPLE, build_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("build", "*.c", "*.so", "*.pyd"))
    # Build against the very clstm this process imports (the installed one in CI): its
    # parent directory goes first on the build's path, so Cython reads the .pxd that
    # ships next to the kernels the example will call.
    env = dict(os.environ)
    clstm_root = str(Path(clstm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [clstm_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                            cwd=build_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"building examples/cython against {clstm.__file__} failed:\n"
                    f"{result.stdout[-6000:]}", pytrace=False)

    sys.path.insert(0, str(build_dir))
    try:
        import lstm_embed
    finally:
        sys.path.remove(str(build_dir))
    yield lstm_embed
    sys.modules.pop("lstm_embed", None)


def make_net(I, H, dtype, seed=0):
    net = clstm.LSTM(I, H, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for name in sorted(net.params):  # larger than the default init, so gates saturate
        net.params[name][...] = rng.uniform(-0.6, 0.6, net.params[name].shape)
    return net


def weights(net):
    """The C API's arguments: w_ih, w_hh, and bias = bias_ih + bias_hh."""
    p = net.params
    return p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]


def test_uses_the_clstm_under_test(lstm_embed):
    # The example's functions came from the clstm.kernels this process imported.
    assert sys.modules["clstm.kernels"] is clstm.kernels
    assert set(clstm.kernels.__pyx_capi__) >= {"lstm_forward_f64", "lstm_backward_f64"}


def test_importing_the_example_imports_clstm(lstm_embed):
    # In a fresh interpreter, importing the extension alone imports clstm.kernels: Cython
    # does it to fetch the cimported functions from its __pyx_capi__.
    code = "import sys, lstm_embed; print(sys.modules['clstm.kernels'].__file__)"
    build_dir = Path(lstm_embed.__file__).parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [
        str(Path(clstm.__file__).resolve().parent.parent), env.get("PYTHONPATH")]))
    # cwd is the build directory: `python -c` puts cwd first on sys.path, and from the
    # repository root the uninstalled source tree would shadow the clstm under test.
    out = subprocess.run([sys.executable, "-c", code], cwd=build_dir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(clstm.kernels.__file__).resolve()


@pytest.mark.parametrize("num_threads", [1, 2])
def test_run_many_float64_matches_lstm(lstm_embed, num_threads):
    I, H = 3, 5
    net = make_net(I, H, "float64")
    rng = np.random.default_rng(1)
    lengths = [1, 7, 3, 12, 2, 5]
    seqs = [rng.normal(size=(T, I)) for T in lengths]

    ys, c_n = lstm_embed.run_many(seqs, *weights(net), num_threads=num_threads)

    assert len(ys) == len(seqs) and c_n.shape == (len(seqs), H)
    for k, seq in enumerate(seqs):
        y, (h_ref, c_ref) = net.forward(seq)  # unbatched (T, I): zero initial state
        assert ys[k].shape == (lengths[k], H)
        assert_allclose(ys[k], y, rtol=1e-13, atol=1e-14)
        assert_allclose(c_n[k], c_ref[0], rtol=1e-13, atol=1e-14)


def test_run_many_float32_matches_lstm(lstm_embed):
    I, H = 4, 6
    net = make_net(I, H, "float32")
    rng = np.random.default_rng(2)
    seqs = [rng.normal(size=(T, I)).astype(np.float32) for T in (4, 1, 9)]

    ys, c_n = lstm_embed.run_many(seqs, *weights(net), num_threads=2)

    assert c_n.dtype == np.float32 and all(y.dtype == np.float32 for y in ys)
    for k, seq in enumerate(seqs):
        y, (_, c_ref) = net.forward(seq)
        assert_allclose(ys[k], y, rtol=1e-5, atol=1e-6)
        assert_allclose(c_n[k], c_ref[0], rtol=1e-5, atol=1e-6)


def test_loss_and_grad_matches_lstm(lstm_embed):
    T, B, I, H = 6, 3, 4, 5
    net = make_net(I, H, "float64", seed=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, B, I))
    target = rng.normal(size=(B, H))

    loss, grads = lstm_embed.loss_and_grad(x, *weights(net), target)

    y, (h_n, _) = net.forward(x)
    net.zero_grad()
    dx, _ = net.backward(np.zeros_like(y), dstate=(h_n - target, None))
    assert_allclose(loss, 0.5 * np.sum((h_n[0] - target) ** 2), rtol=1e-13)
    assert_allclose(grads["x"], dx, rtol=1e-12, atol=1e-14)
    assert_allclose(grads["w_ih"], net.grads["weight_ih_l0"], rtol=1e-12, atol=1e-14)
    assert_allclose(grads["w_hh"], net.grads["weight_hh_l0"], rtol=1e-12, atol=1e-14)
    assert_allclose(grads["bias"], net.grads["bias_ih_l0"], rtol=1e-12, atol=1e-14)
    assert_allclose(grads["bias"], net.grads["bias_hh_l0"], rtol=1e-12, atol=1e-14)


def test_loss_and_grad_threads_agree(lstm_embed):
    T, B, I, H = 5, 4, 3, 4
    net = make_net(I, H, "float64", seed=4)
    rng = np.random.default_rng(4)
    x, target = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    loss1, g1 = lstm_embed.loss_and_grad(x, *weights(net), target, num_threads=1)
    loss2, g2 = lstm_embed.loss_and_grad(x, *weights(net), target, num_threads=2)
    assert_allclose(loss2, loss1, rtol=1e-13)
    for name in g1:
        assert_allclose(g2[name], g1[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_example_rejects_bad_shapes(lstm_embed):
    net = make_net(3, 4, "float64")
    w_ih, w_hh, bias = weights(net)
    with pytest.raises(ValueError, match=r"sequences\[1\]"):
        lstm_embed.run_many([np.zeros((2, 3)), np.zeros((2, 5))], w_ih, w_hh, bias)
    with pytest.raises(ValueError, match="w_hh"):
        lstm_embed.run_many([np.zeros((2, 3))], w_ih, w_hh[:, :3], bias)
    with pytest.raises(ValueError, match="target"):
        lstm_embed.loss_and_grad(np.zeros((2, 1, 3)), w_ih, w_hh, bias, np.zeros((2, 4)))


@pytest.mark.parametrize("num_threads", [1, 2])
def test_encode_bidirectional_matches_lstm_with_lengths(lstm_embed, num_threads):
    """The packed-layout C API, both directions, against clstm.LSTM(bidirectional=True)
    with lengths."""
    I, H = 3, 5
    net = clstm.LSTM(I, H, bidirectional=True, dtype="float64", seed=3)
    p = net.params
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 4, I))
    lengths = np.array([2, 6, 1, 4])
    _, (h_ref, _) = net.forward(x, lengths=lengths)
    weights = [(p[f"weight_ih_l0{s}"], p[f"weight_hh_l0{s}"],
                p[f"bias_ih_l0{s}"] + p[f"bias_hh_l0{s}"]) for s in ("", "_reverse")]
    h_n = lstm_embed.encode_bidirectional(x, lengths, *weights, num_threads=num_threads)
    assert_allclose(h_n, h_ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_gru_encode_matches_gru_with_lengths(lstm_embed, num_threads, bias):
    """The GRU's packed-layout C API against clstm.GRU with lengths."""
    I, H = 3, 5
    net = clstm.GRU(I, H, bias=bias, dtype="float64", seed=5)
    p = net.params
    rng = np.random.default_rng(6)
    x = rng.normal(size=(6, 4, I))
    lengths = np.array([2, 6, 1, 4])
    _, h_ref = net.forward(x, lengths=lengths)
    biases = (p["bias_ih_l0"], p["bias_hh_l0"]) if bias else ()
    h_n = lstm_embed.gru_encode(x, lengths, p["weight_ih_l0"], p["weight_hh_l0"], *biases,
                                num_threads=num_threads)
    assert_allclose(h_n, h_ref[0], rtol=1e-13, atol=1e-14)
