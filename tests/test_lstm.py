"""Tests of clstm.LSTM (the compiled kernels behind the Python API) against the
contract in DEVELOPERS.md: finite differences, the NumPy oracle in
tests/reference.py, and the API's promises (accumulating grads, views into the
flat buffers, unbatched and batch-first layouts, threads, dropout).

Sizes are tiny on purpose: the whole file runs in a few seconds.
"""

import numpy as np
import pytest

import clstm
from clstm import kernels
from knobs import kernel_knob
from reference import (  # tests/ is on sys.path through pyproject's pythonpath
    layers_from_params,
    numerical_gradient,
    params_from_layers,
    reference_backward,
    reference_forward,
)

LAYER_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# --------------------------------------------------------------------------
# helpers


def make_net(input_size, hidden_size, num_layers=1, *, dtype="float64", peephole=False,
             seed=0, scale=0.5, **kwargs):
    """An LSTM whose parameters are overwritten with U(-scale, scale) values from a
    fixed rng (float64 draws, so a float32 and a float64 net made with the same
    arguments hold the same weights up to rounding)."""
    net = clstm.LSTM(input_size, hidden_size, num_layers, dtype=dtype, peephole=peephole,
                     seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    for name in sorted(net.params):
        p = net.params[name]
        p[...] = rng.uniform(-scale, scale, p.shape)
    return net


def make_data(rng, T, B, I, H, L, dtype=np.float64):
    """x, (h0, c0) and the loss weights R, (Rh, Rc): loss = sum(y*R) + sum(h_n*Rh) + sum(c_n*Rc)."""
    def normal(*shape):
        return rng.normal(size=shape).astype(dtype)
    return normal(T, B, I), (normal(L, B, H), normal(L, B, H)), normal(T, B, H), (normal(L, B, H), normal(L, B, H))


def loss_of(y, state, R, Rstate):
    h_n, c_n = state
    Rh, Rc = Rstate
    return float(np.sum(y * R, dtype=np.float64) + np.sum(h_n * Rh, dtype=np.float64)
                 + np.sum(c_n * Rc, dtype=np.float64))


def run(net, x, state, dy, dstate):
    """Forward and backward from zeroed grads; returns plain copies of everything."""
    net.zero_grad()
    y, (h_n, c_n) = net.forward(x, state)
    dx, (dh0, dc0) = net.backward(dy, dstate)
    grads = {name: np.array(g) for name, g in net.grads.items()}
    return dict(y=np.array(y), h_n=np.array(h_n), c_n=np.array(c_n), dx=np.array(dx),
                dh0=np.array(dh0), dc0=np.array(dc0), grads=grads)


def run_reference(net, num_layers, peephole, x, state, dy, dstate):
    """The oracle in float64 with the net's parameters."""
    params = {name: np.array(p, dtype=np.float64) for name, p in net.params.items()}
    layers = layers_from_params(params, num_layers, peephole)
    as64 = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    h0, c0 = (None, None) if state is None else map(as64, state)
    dh_n, dc_n = (None, None) if dstate is None else map(as64, dstate)
    y, (h_n, c_n), cache = reference_forward(as64(x), layers, h0, c0)
    dx, (dh0, dc0), grads = reference_backward(as64(dy), cache, dh_n, dc_n)
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, grads=params_from_layers(grads))


def assert_results_close(got, want, rtol, atol, skip=()):
    for key in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        if key not in skip:
            np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
    assert set(got["grads"]) == set(want["grads"])
    for name in want["grads"]:
        np.testing.assert_allclose(got["grads"][name], want["grads"][name], rtol=rtol,
                                   atol=atol, err_msg=f"grad of {name}")


def fd_check(loss, array, analytic, rng, max_entries=30, eps=1e-6, what=""):
    """Finite differences on at most ``max_entries`` random entries of ``array``."""
    n = array.size
    idx = np.arange(n) if n <= max_entries else np.sort(rng.choice(n, max_entries, replace=False))
    numeric = numerical_gradient(loss, array, eps=eps, indices=idx)
    np.testing.assert_allclose(np.asarray(analytic).reshape(-1)[idx], numeric,
                               rtol=1e-5, atol=1e-7, err_msg=f"finite differences of {what}")


def expected_param_shapes(input_size, hidden_size, num_layers, peephole):
    shapes = {}
    for k in range(num_layers):
        in_k = input_size if k == 0 else hidden_size
        shapes[f"weight_ih_l{k}"] = (4 * hidden_size, in_k)
        shapes[f"weight_hh_l{k}"] = (4 * hidden_size, hidden_size)
        shapes[f"bias_ih_l{k}"] = (4 * hidden_size,)
        shapes[f"bias_hh_l{k}"] = (4 * hidden_size,)
        if peephole:
            shapes[f"weight_peephole_l{k}"] = (3, hidden_size)
    return shapes


# --------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_params_and_grads_have_pytorch_names_shapes_and_dtype(peephole, num_layers, dtype):
    net = clstm.LSTM(5, 3, num_layers, dtype=dtype, peephole=peephole, seed=0)
    shapes = expected_param_shapes(5, 3, num_layers, peephole)
    assert {k: v.shape for k, v in net.params.items()} == shapes
    assert {k: v.shape for k, v in net.grads.items()} == shapes
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert net.flat_params.shape == (total,) and net.flat_grads.shape == (total,)
    assert net.flat_params.dtype == net.flat_grads.dtype == np.dtype(dtype)
    assert all(p.dtype == np.dtype(dtype) for p in net.params.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("peephole", [False, True])
def test_default_init_is_uniform_within_inverse_sqrt_hidden(dtype, peephole):
    H = 16
    net = clstm.LSTM(7, H, 2, dtype=dtype, peephole=peephole, seed=1)
    bound = 1 / np.sqrt(H)
    for name, p in net.params.items():
        assert np.all(np.abs(p) <= bound + 1e-7), name
        # not all zero and actually spread over the interval
        assert np.std(p) > bound / 4, name
    assert np.all(net.flat_grads == 0)


def test_same_seed_gives_same_init_and_different_seed_differs():
    a = clstm.LSTM(4, 5, 2, dtype="float64", seed=123)
    b = clstm.LSTM(4, 5, 2, dtype="float64", seed=123)
    c = clstm.LSTM(4, 5, 2, dtype="float64", seed=124)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)


@pytest.mark.parametrize("peephole", [False, True])
def test_params_are_views_into_flat_params(peephole):
    net = make_net(3, 4, 2, peephole=peephole)
    for name, p in net.params.items():
        assert np.shares_memory(p, net.flat_params), name
    # writing through flat_params is seen through params and by forward
    x = np.random.default_rng(0).normal(size=(3, 2, 3))
    y_before, _ = net.forward(x)
    y_before = np.array(y_before)
    net.flat_params[:] = 0
    assert all(np.all(p == 0) for p in net.params.values())
    y_zero, (h_n, c_n) = net.forward(x)
    # all weights and biases zero: every gate is 1/2, g = 0, so c = 0 and h = 0
    np.testing.assert_array_equal(y_zero, 0)
    assert not np.array_equal(y_before, 0)
    # and writing through params is seen in flat_params
    net.params["bias_hh_l1"][...] = 2.0
    assert np.count_nonzero(net.flat_params) == net.params["bias_hh_l1"].size


def test_grads_are_views_into_flat_grads():
    net = make_net(3, 4, 2, peephole=True)
    for name, g in net.grads.items():
        assert np.shares_memory(g, net.flat_grads), name
    rng = np.random.default_rng(1)
    x, state, R, Rstate = make_data(rng, 3, 2, 3, 4, 2)
    net.forward(x, state)
    net.backward(R, Rstate)
    assert np.sum(np.abs(net.flat_grads)) > 0
    np.testing.assert_allclose(np.sum(net.flat_grads),
                               sum(np.sum(g) for g in net.grads.values()), rtol=1e-12)


# --------------------------------------------------------------------------
# gradients


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_gradients_match_finite_differences_float64(peephole, num_layers):
    rng = np.random.default_rng(1000 + 10 * num_layers + peephole)
    T, B, I, H = 4, 3, 3, 4
    net = make_net(I, H, num_layers, peephole=peephole, seed=num_layers)
    x, (h0, c0), R, Rstate = make_data(rng, T, B, I, H, num_layers)

    got = run(net, x, (h0, c0), R, Rstate)
    fd_check_all(net, x, (h0, c0), R, Rstate, got, rng)


def fd_check_all(net, x, state, R, Rstate, got, rng):
    """Every gradient in ``got`` (run's: dx, dh0, dc0 and each parameter's) against
    finite differences of loss_of."""
    h0, c0 = state

    def loss():
        y, out = net.forward(x, (h0, c0))
        return loss_of(y, out, R, Rstate)

    fd_check(loss, x, got["dx"], rng, what="x")
    fd_check(loss, h0, got["dh0"], rng, what="h0")
    fd_check(loss, c0, got["dc0"], rng, what="c0")
    for name in sorted(net.params):
        fd_check(loss, net.params[name], got["grads"][name], rng, what=name)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_dstate", [False, True])
def test_matches_reference_float64(peephole, num_layers, with_state, with_dstate):
    rng = np.random.default_rng(2000 + 8 * num_layers + 4 * peephole + 2 * with_state + with_dstate)
    T, B, I, H = 5, 3, 4, 3
    net = make_net(I, H, num_layers, peephole=peephole, seed=7)
    x, state, R, Rstate = make_data(rng, T, B, I, H, num_layers)
    state = state if with_state else None
    Rstate = Rstate if with_dstate else None
    got = run(net, x, state, R, Rstate)
    want = run_reference(net, num_layers, peephole, x, state, R, Rstate)
    assert got["y"].dtype == np.float64
    assert got["h_n"].shape == got["dh0"].shape == (num_layers, B, H)
    assert_results_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference_float32_loosely(peephole, with_state):
    rng = np.random.default_rng(3000 + 2 * peephole + with_state)
    T, B, I, H, L = 6, 3, 5, 4, 2
    net = make_net(I, H, L, dtype="float32", peephole=peephole, seed=3)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.float32)
    state = state if with_state else None
    got = run(net, x, state, R, Rstate)
    assert got["y"].dtype == got["dx"].dtype == got["dh0"].dtype == np.float32
    assert all(g.dtype == np.float32 for g in got["grads"].values())
    want = run_reference(net, L, peephole, x, state, R, Rstate)
    assert_results_close(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("peephole", [False, True])
def test_float32_matches_float64_for_same_weights(peephole):
    rng = np.random.default_rng(4)
    T, B, I, H, L = 5, 2, 3, 4, 3
    net32 = make_net(I, H, L, dtype="float32", peephole=peephole, seed=9)
    net64 = make_net(I, H, L, dtype="float64", peephole=peephole, seed=9)
    for name in net64.params:
        net64.params[name][...] = net32.params[name]          # identical (rounded) weights
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.float32)
    a = run(net32, x, state, R, Rstate)
    b = run(net64, x.astype(np.float64), tuple(s.astype(np.float64) for s in state),
            R.astype(np.float64), tuple(s.astype(np.float64) for s in Rstate))
    assert_results_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
def test_varying_sequence_length_and_batch_between_calls():
    """Buffers reused across calls of different shapes must not leak between them."""
    net = make_net(3, 4, 2, peephole=True, seed=5)
    rng = np.random.default_rng(5)
    for T, B in [(4, 3), (1, 1), (6, 2), (2, 5), (4, 3)]:
        x, state, R, Rstate = make_data(rng, T, B, 3, 4, 2)
        got = run(net, x, state, R, Rstate)
        want = run_reference(net, 2, True, x, state, R, Rstate)
        assert_results_close(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# accumulation


def test_backward_accumulates_grads_until_zero_grad():
    net = make_net(3, 4, 2, peephole=True)
    rng = np.random.default_rng(6)
    x, state, R, Rstate = make_data(rng, 3, 2, 3, 4, 2)
    once = run(net, x, state, R, Rstate)["grads"]
    net.forward(x, state)
    net.backward(R, Rstate)          # grads hold 2x now
    for name, g in once.items():
        np.testing.assert_allclose(net.grads[name], 2 * g, rtol=1e-12, atol=1e-14, err_msg=name)
    net.zero_grad()
    assert np.all(net.flat_grads == 0)
    assert all(np.all(g == 0) for g in net.grads.values())
    # the grads views survive zero_grad
    for g in net.grads.values():
        assert np.shares_memory(g, net.flat_grads)
    net.forward(x, state)
    net.backward(R, Rstate)
    for name, g in once.items():
        np.testing.assert_allclose(net.grads[name], g, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
def test_backward_without_input_grad_gives_same_param_and_state_grads():
    net = make_net(3, 4, 2, peephole=True)
    rng = np.random.default_rng(8)
    x, state, R, Rstate = make_data(rng, 3, 2, 3, 4, 2)
    full = run(net, x, state, R, Rstate)
    net.zero_grad()
    net.forward(x, state)
    dx, (dh0, dc0) = net.backward(R, Rstate, input_grad=False)
    if dx is not None:          # the contract leaves dx open here; if given it must be right
        np.testing.assert_allclose(dx, full["dx"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dh0, full["dh0"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dc0, full["dc0"], rtol=1e-12, atol=1e-14)
    for name, g in full["grads"].items():
        np.testing.assert_allclose(net.grads[name], g, rtol=1e-12, atol=1e-14, err_msg=name)


# --------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unbatched_input_equals_batch_of_one(dtype):
    T, I, H, L = 4, 3, 5, 2
    net = make_net(I, H, L, dtype=dtype, peephole=True)
    rng = np.random.default_rng(9)
    x, state, R, Rstate = make_data(rng, T, 1, I, H, L, dtype=np.dtype(dtype))
    batched = run(net, x, state, R, Rstate)
    unb = run(net, x[:, 0], tuple(s[:, 0] for s in state), R[:, 0], tuple(s[:, 0] for s in Rstate))
    assert unb["y"].shape == (T, H)
    assert unb["h_n"].shape == unb["c_n"].shape == (L, H)
    assert unb["dx"].shape == (T, I)
    assert unb["dh0"].shape == unb["dc0"].shape == (L, H)
    for key in ("y", "dx"):
        np.testing.assert_array_equal(unb[key], batched[key][:, 0], err_msg=key)
    for key in ("h_n", "c_n", "dh0", "dc0"):
        np.testing.assert_array_equal(unb[key], batched[key][:, 0], err_msg=key)
    for name in batched["grads"]:
        np.testing.assert_array_equal(unb["grads"][name], batched["grads"][name], err_msg=name)
    # and without any state
    y, (h_n, _) = net.forward(x[:, 0])
    assert y.shape == (T, H) and h_n.shape == (L, H)
    np.testing.assert_array_equal(y, run(net, x, None, R, None)["y"][:, 0])


@pytest.mark.parametrize("with_state", [False, True])
def test_batch_first_gives_transposed_result(with_state):
    T, B, I, H, L = 4, 3, 2, 3, 2
    tm = make_net(I, H, L, peephole=True, seed=2)
    bf = make_net(I, H, L, peephole=True, seed=2, batch_first=True)
    np.testing.assert_array_equal(tm.flat_params, bf.flat_params)
    rng = np.random.default_rng(10)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L)
    state = state if with_state else None
    a = run(tm, x, state, R, Rstate)
    b = run(bf, np.ascontiguousarray(x.transpose(1, 0, 2)), state,
            np.ascontiguousarray(R.transpose(1, 0, 2)), Rstate)
    assert b["y"].shape == (B, T, H) and b["dx"].shape == (B, T, I)
    # states stay (L, B, H) with batch_first, as in PyTorch
    assert b["h_n"].shape == b["dh0"].shape == (L, B, H)
    np.testing.assert_allclose(b["y"], a["y"].transpose(1, 0, 2), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(b["dx"], a["dx"].transpose(1, 0, 2), rtol=1e-13, atol=1e-15)
    for key in ("h_n", "c_n", "dh0", "dc0"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-13, atol=1e-15, err_msg=key)
    for name in a["grads"]:
        np.testing.assert_allclose(b["grads"][name], a["grads"][name], rtol=1e-12, atol=1e-14,
                                   err_msg=name)


# --------------------------------------------------------------------------
# threads


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H", [4, 40])    # 40: packed weights of 2 panels (f32) or 3 (f64)
def test_results_do_not_depend_on_thread_count(dtype, H):
    T, B, I, L = 4, 6, 3, 2
    net = make_net(I, H, L, dtype=dtype, peephole=True)
    rng = np.random.default_rng(11)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.dtype(dtype))
    old = clstm.get_num_threads()
    # the kernels keep tiny problems on one thread; force the split so 2 threads run
    # (the packing of weights and inputs and the bias gradient's column sums too)
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_min_parallel_pass_bytes, 0):
        with clstm.threads(1):
            assert clstm.get_num_threads() == 1
            one = run(net, x, state, R, Rstate)
        with clstm.threads(2):
            assert clstm.get_num_threads() == 2
            two = run(net, x, state, R, Rstate)
            if kernels.openmp_enabled():
                assert kernels._threads_used_by_last_call() == 2
    assert clstm.get_num_threads() == old
    # A thread's per-step GEMM picks its micro-kernel by its number of rows (3 here, 6 on
    # one thread), which sums in another order: float32 agrees to rounding, amplified by
    # the gradients' sums; float64 to a few ulp. (A wrong split is off by far more.)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_results_close(two, one, **tol)


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_input_projection_step_by_step_equals_upfront(dtype, threads):
    # The forward computes x·W_ihᵀ either step by step inside each thread's loop or for
    # all steps at once before it, depending on rows per thread and weight size; both
    # must give the same outputs and gradients.
    T, B, I, H, L = 5, 8, 7, 12, 2
    net = make_net(I, H, L, dtype=dtype, peephole=True)
    rng = np.random.default_rng(21)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.dtype(dtype))
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(threads):
        with kernel_knob(kernels._set_min_rows_per_step_projection, 0):
            step_by_step = run(net, x, state, R, Rstate)
        with kernel_knob(kernels._set_min_rows_per_step_projection, 1 << 30):
            upfront = run(net, x, state, R, Rstate)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    assert_results_close(step_by_step, upfront, **tol)
    loose = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    assert_results_close(step_by_step, run_reference(net, L, True, x, state, R, Rstate), **loose)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B, threads, H, peephole", [
    (1, 2, 40, True),     # units 0:16 and 16:40
    (1, 2, 64, False),
    (3, 4, 64, True),     # more threads than rows: each thread has all 3 rows
    (1, 3, 56, False),    # units 0:16, 16:32, 32:56
    (4, 2, 256, False),   # 2 rows per thread and W_hh >= 1 MiB: units rather than rows
])
@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
def test_hidden_unit_split_equals_one_thread(dtype, B, threads, H, peephole):
    # With fewer rows than threads, the forward splits the hidden units over the threads
    # (a barrier per step). Same outputs and gradients as one thread, and the reference.
    T, I, L = 6, 5, 2
    # (smaller weights for H = 256, whose float32 sums would otherwise drift from the
    # float64 reference by more than its tolerance, split or not)
    net = make_net(I, H, L, dtype=dtype, peephole=peephole, scale=0.5 if H < 128 else 0.1)
    rng = np.random.default_rng(22)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.dtype(dtype))
    with kernel_knob(kernels._set_min_flops_per_thread, 0), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        with clstm.threads(1):
            one = run(net, x, state, R, Rstate)
            one_zero_state = np.array(net.forward(x)[0])   # no state given: zeros
        with clstm.threads(threads):
            split = run(net, x, state, R, Rstate)
            split_zero_state = np.array(net.forward(x)[0])
            if kernels.openmp_enabled():   # (backward, by rows, sets its own count)
                assert kernels._threads_used_by_last_call() == min(threads, H // 16)
                assert kernels._last_forward_split_units()
    # Narrower column blocks sum the products in another order than one thread does:
    # float32 gates differ by rounding, which the gradients' sums amplify.
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_results_close(split, one, **tol)
    np.testing.assert_allclose(split_zero_state, one_zero_state, **tol)
    loose = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    assert_results_close(split, run_reference(net, L, peephole, x, state, R, Rstate), **loose)


def test_hidden_unit_split_only_for_idle_threads_or_few_rows_and_large_weights():
    net = make_net(5, 64, 1, dtype="float32")
    x = np.ones((4, 2, 5), np.float32)
    if not kernels.openmp_enabled():
        pytest.skip("built without OpenMP")
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
        with kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
            net.forward(x)            # 2 rows for 2 threads, W_hh small: the batch split
            assert kernels._threads_used_by_last_call() == 2
            assert not kernels._last_forward_split_units()
            net.forward(x[:, :1])     # 1 row: the unit split
            assert kernels._threads_used_by_last_call() == 2
            assert kernels._last_forward_split_units()
        with kernel_knob(kernels._set_min_step_flops_per_unit_thread, 1e30):
            net.forward(x[:, :1])     # too little work per step: one thread
            assert kernels._threads_used_by_last_call() == 1
    # idle threads that sleep would need waking at every step's barrier: no unit split
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2), \
            kernel_knob(kernels._set_min_step_flops_per_unit_thread, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_WAIT_POLICY", "Passive")
            net.forward(x[:, :1])
            assert not kernels._last_forward_split_units()
            mp.setenv("OMP_WAIT_POLICY", "active")
            net.forward(x[:, :1])
            assert kernels._last_forward_split_units()
    # 2 rows per thread: rows while W_hh is small, units once it takes 1 MiB
    x4 = np.ones((2, 4, 5), np.float32)
    small, large = make_net(5, 128, 1, dtype="float32"), make_net(5, 256, 1, dtype="float32")
    with kernel_knob(kernels._set_min_flops_per_thread, 0), clstm.threads(2):
        small.forward(x4)
        assert kernels._threads_used_by_last_call() == 2
        assert not kernels._last_forward_split_units()
        large.forward(x4)
        assert kernels._threads_used_by_last_call() == 2
        assert kernels._last_forward_split_units()
        large.forward(np.ones((2, 6, 5), np.float32))   # 3 rows per thread: rows
        assert not kernels._last_forward_split_units()


@pytest.mark.parametrize("code", [c for c in ("avx2", "avx512") if c in kernels.supported_isas()])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("H", [3, 5, 16, 37])
def test_gate_loops_agree(dtype, peephole, H, code):
    # The gate loops exist in intrinsics (AVX2+FMA, AVX-512: one template) and in plain
    # C: each gives the reference's results, and the C loop's to a few ulp (with a state
    # and without; H = 3, 5, 37 end in a masked tail).
    T, B, I, L = 6, 3, 4, 2
    net = make_net(I, H, L, dtype=dtype, peephole=peephole)
    rng = np.random.default_rng(23)
    x, state, R, Rstate = make_data(rng, T, B, I, H, L, dtype=np.dtype(dtype))
    results = {}
    for gate_code in (code, "c"):
        with kernel_knob(kernels._set_gates_isa, gate_code):
            results[gate_code] = (run(net, x, state, R, Rstate), np.array(net.forward(x)[0]))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    assert_results_close(results[code][0], results["c"][0], **tol)
    np.testing.assert_allclose(results[code][1], results["c"][1], **tol)
    loose = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    assert_results_close(results[code][0],
                         run_reference(net, L, peephole, x, state, R, Rstate), **loose)


# --------------------------------------------------------------------------
# inputs and outputs are not aliased


def test_forward_and_backward_do_not_modify_their_inputs():
    net = make_net(3, 4, 2, peephole=True)
    rng = np.random.default_rng(12)
    x, state, R, Rstate = make_data(rng, 3, 2, 3, 4, 2)
    copies = [a.copy() for a in (x, *state, R, *Rstate)]
    net.forward(x, state)
    net.backward(R, Rstate)
    for before, after in zip(copies, (x, *state, R, *Rstate)):
        np.testing.assert_array_equal(before, after)


def test_outputs_are_not_overwritten_by_later_calls():
    net = make_net(3, 4, 2, peephole=True)
    rng = np.random.default_rng(13)
    x1, s1, R1, Rs1 = make_data(rng, 3, 2, 3, 4, 2)
    x2, s2, R2, Rs2 = make_data(rng, 3, 2, 3, 4, 2)
    y1, (h1, c1) = net.forward(x1, s1)
    dx1, (dh1, dc1) = net.backward(R1, Rs1)
    kept = [np.array(a) for a in (y1, h1, c1, dx1, dh1, dc1)]
    net.forward(x2, s2)
    net.backward(R2, Rs2)
    for before, now in zip(kept, (y1, h1, c1, dx1, dh1, dc1)):
        np.testing.assert_array_equal(before, now)


# --------------------------------------------------------------------------
# dropout


def test_train_and_eval_toggle_training_flag():
    net = clstm.LSTM(2, 3, 2, dropout=0.3, seed=0)
    net.eval()
    assert net.training is False
    net.train()
    assert net.training is True


@pytest.mark.parametrize("peephole", [False, True])
def test_dropout_in_eval_mode_equals_no_dropout(peephole):
    rng = np.random.default_rng(14)
    T, B, I, H, L = 4, 3, 3, 4, 3
    net = make_net(I, H, L, peephole=peephole, dropout=0.5, seed=4)
    net.eval()
    x, state, R, Rstate = make_data(rng, T, B, I, H, L)
    got = run(net, x, state, R, Rstate)
    want = run_reference(net, L, peephole, x, state, R, Rstate)
    assert_results_close(got, want, rtol=1e-10, atol=1e-12)


def test_dropout_with_one_layer_has_no_effect_in_train_mode():
    """Dropout acts between layers (as in PyTorch): never on the last layer's output."""
    rng = np.random.default_rng(15)
    T, B, I, H = 4, 3, 3, 4
    net = make_net(I, H, 1, dropout=0.5, seed=4)
    net.train()
    x, state, R, Rstate = make_data(rng, T, B, I, H, 1)
    got = run(net, x, state, R, Rstate)
    want = run_reference(net, 1, False, x, state, R, Rstate)
    assert_results_close(got, want, rtol=1e-10, atol=1e-12)


def test_dropout_in_train_mode_is_reproducible_with_seed_and_differs_from_eval():
    rng = np.random.default_rng(16)
    T, B, I, H, L = 5, 4, 3, 6, 2
    x, state, R, Rstate = make_data(rng, T, B, I, H, L)
    results = []
    for _ in range(2):
        net = make_net(I, H, L, dropout=0.5, seed=21)
        net.train()
        results.append(run(net, x, state, R, Rstate))
    assert_results_close(results[0], results[1], rtol=0, atol=0)
    net.eval()
    evaluated = run(net, x, state, R, Rstate)
    assert not np.allclose(results[0]["y"], evaluated["y"])
    # dropout acts on the outputs passed upwards: the first layer's own final
    # state is computed before any mask and equals the eval-mode one
    np.testing.assert_allclose(results[0]["h_n"][0], evaluated["h_n"][0], rtol=1e-12)
    np.testing.assert_allclose(results[0]["c_n"][0], evaluated["c_n"][0], rtol=1e-12)
    # each forward in train mode draws a new mask
    net.train()
    again = run(net, x, state, R, Rstate)
    assert not np.array_equal(again["y"], results[0]["y"])


@pytest.mark.usefixtures("isa_level")   # every ISA level the CPU runs
def test_dropout_backward_matches_finite_differences_of_the_masked_function():
    """A fresh net with the same seed draws the same mask on its first forward, so the
    masked function can be evaluated repeatedly for finite differences."""
    rng = np.random.default_rng(17)
    T, B, I, H, L = 3, 2, 2, 3, 2
    seed = 31
    x, state, R, Rstate = make_data(rng, T, B, I, H, L)
    params = {n: np.array(p) for n, p in make_net(I, H, L, peephole=True, dropout=0.4, seed=seed).params.items()}

    def fresh_net():
        net = clstm.LSTM(I, H, L, dtype="float64", peephole=True, dropout=0.4, seed=seed)
        for name, p in params.items():
            net.params[name][...] = p
        net.train()
        return net

    got = run(fresh_net(), x, state, R, Rstate)

    def loss():
        y, st = fresh_net().forward(x, state)
        return loss_of(y, st, R, Rstate)

    fd_check(loss, x, got["dx"], rng, max_entries=8, what="x")
    fd_check(loss, state[0], got["dh0"], rng, max_entries=8, what="h0")
    for name in sorted(params):
        fd_check(loss, params[name], got["grads"][name], rng, max_entries=8, what=name)


def test_dropout_zeroes_or_scales_by_inverse_keep_probability():
    """Inverted dropout as in PyTorch: each unit passed upwards is either 0 or y/(1-p).

    With T=1, hidden size 1 and zero initial state, every batch row of the top
    layer's output must equal the oracle's output for one of those two inputs.
    """
    p, B = 0.25, 64
    rng = np.random.default_rng(18)
    net = make_net(2, 1, 2, dropout=p, seed=41, scale=1.0)
    net.train()
    x = rng.normal(size=(1, B, 2))
    y, _ = net.forward(x)
    params = {n: np.array(v) for n, v in net.params.items()}
    layers = layers_from_params(params, 2, peephole=False)
    y1, _, _ = reference_forward(x, layers[:1])
    dropped, _, _ = reference_forward(np.zeros_like(y1), layers[1:])
    kept, _, _ = reference_forward(y1 / (1 - p), layers[1:])
    is_dropped = np.isclose(y, dropped, rtol=1e-12, atol=1e-14)
    is_kept = np.isclose(y, kept, rtol=1e-12, atol=1e-14)
    assert np.all(is_dropped | is_kept), "some units are neither 0 nor y/(1-p)"
    n_dropped = int(np.sum(is_dropped & ~is_kept))
    assert 3 <= n_dropped <= 35, f"{n_dropped} of {B} dropped with p={p}"


# --------------------------------------------------------------------------
# workspaces are reused between calls


def test_backward_after_two_forwards_differentiates_the_second():
    rng = np.random.default_rng(5)
    net = clstm.LSTM(3, 4, 2, dtype="float64", peephole=True, seed=0)
    fresh = clstm.LSTM(3, 4, 2, dtype="float64", peephole=True, seed=0)
    x_long, x_short = rng.standard_normal((9, 2, 3)), rng.standard_normal((4, 2, 3))
    net.forward(x_long)                       # leaves a larger workspace behind
    y, _ = net.forward(x_short)
    dx, (dh0, dc0) = net.backward(np.ones_like(y))
    y_ref, _ = fresh.forward(x_short)
    dx_ref, (dh0_ref, dc0_ref) = fresh.backward(np.ones_like(y_ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-13)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-13)
    np.testing.assert_allclose(dh0, dh0_ref, rtol=1e-13, atol=1e-15)
    for name in net.grads:
        np.testing.assert_allclose(net.grads[name], fresh.grads[name], rtol=1e-13, atol=1e-15)


def test_a_forward_rejected_by_validation_keeps_the_previous_one_intact():
    rng = np.random.default_rng(6)
    net = clstm.LSTM(3, 4, dtype="float64", seed=0)
    fresh = clstm.LSTM(3, 4, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2, 3))
    y, _ = net.forward(x)
    with pytest.raises(ValueError, match="expected 3 features"):
        net.forward(np.ones((5, 2, 7)))        # rejected before any workspace is touched
    dx, _ = net.backward(np.ones_like(y))
    y_ref, _ = fresh.forward(x)
    dx_ref, _ = fresh.backward(np.ones_like(y_ref))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-13)
    with pytest.raises(ValueError, match="forward"):
        net.backward(np.ones_like(y))          # one backward per forward
