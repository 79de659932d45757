"""One adapter per implementation, all with the same interface.

    peer = PEERS["torch"]()                      # or ClstmPeer()
    peer.available()                             # None, or why it cannot run here
    runner = peer.setup(shape, dtype, threads, params, x)
    runner.fwd(); runner.train()                 # one inference call / one training step
    runner.modes                                 # the modes it runs ("fwd", "train")
    runner.forward_output(); runner.train_grads()  # for the cross-check, outside the timing

Every peer receives the same weights (`make_params`, PyTorch names and layout) and the same
input x (T, B, I), for the cell the shape names (`shape.cell`: an LSTM, or a GRU with
PyTorch's gates r, z, n and its reset gate applied after the recurrent product); a peer
that wants batch-major input gets it transposed at setup, outside the timing.  A training step is forward plus backward with every weight gradient, loss =
sum of the outputs (dy = ones), no optimizer update.  `setup` raises `Skip` when the peer
cannot run that cell (for instance a thread count its runtime cannot switch to).
"""

import contextlib
import importlib
import os
import sys
from pathlib import Path

import numpy as np

from bench.timing import OPENBLAS_SPIN_PAUSE_S, ORT_SPIN_PAUSE_S

REPO_ROOT = Path(__file__).resolve().parent.parent


class Skip(Exception):
    """This peer cannot run this cell; the message says why."""


def make_params(shape, dtype, seed=0):
    """PyTorch-named LSTM (or GRU) weights, drawn as PyTorch draws them:
    U(-1/sqrt(H), 1/sqrt(H)); 4H gate rows for an LSTM, 3H for a GRU."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(shape.H)
    G = shape.gates * shape.H
    params = {}
    for k, i_k in enumerate(shape.input_sizes()):
        for name, size in ((f"weight_ih_l{k}", (G, i_k)), (f"weight_hh_l{k}", (G, shape.H)),
                           (f"bias_ih_l{k}", (G,)), (f"bias_hh_l{k}", (G,))):
            params[name] = rng.uniform(-bound, bound, size).astype(dtype)
    return params


def make_input(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal((shape.T, shape.B, shape.I)).astype(dtype)


class Runner:
    """What `setup` returns; subclasses fill in the four methods."""

    # Seconds to wait after each timed sample of this runner before the next one starts:
    # for implementations whose worker threads keep spinning on the cores after a call.
    pause_after_s = 0.0
    # The modes this runner can time: an inference-only runtime leaves out "train".
    modes = ("fwd", "train")

    def fwd(self):
        raise NotImplementedError

    def train(self):
        raise NotImplementedError

    def forward_output(self):
        """y (T, B, H) as a NumPy array."""
        raise NotImplementedError

    def train_grads(self):
        """Weight gradients of one training step, PyTorch names -> NumPy arrays."""
        raise NotImplementedError

    def notes(self):
        """Anything the report should say about how this peer ran (dict)."""
        return {}


class Peer:
    name = ""

    def available(self):
        return None

    def version(self):
        return ""

    def setup(self, shape, dtype, threads, params, x):
        raise NotImplementedError


# --------------------------------------------------------------------------- clstm


def clstm_module():
    """The `clstm` package (which one: see bench/__init__.py)."""
    mod = importlib.import_module("clstm")
    mod.LSTM  # noqa: B018
    return mod


def clstm_location(mod=None):
    """The sys.path folder `clstm` was imported from (the parent of the package folder)."""
    mod = mod or clstm_module()
    return str(Path(mod.__file__).resolve().parent.parent)


class ClstmPeer(Peer):
    name = "clstm"

    def available(self):
        try:
            clstm_module()
        except Exception as exc:
            return f"clstm unusable: {type(exc).__name__}: {exc}"
        return None

    def version(self):
        mod = clstm_module()
        return getattr(mod, "__version__", "") or _dist_version("clstm-cpu")

    def file(self):
        return clstm_module().__file__

    def setup(self, shape, dtype, threads, params, x):
        mod = clstm_module()
        mod.set_num_threads(threads)
        net = clstm_class(mod, shape.cell)(shape.I, shape.H, shape.L, dtype=dtype, seed=0)
        for name, value in params.items():
            net.params[name][...] = value
        return _ClstmRunner(net, x, np.ones((shape.T, shape.B, shape.H), dtype=dtype))


def clstm_class(mod, cell):
    """clstm.LSTM or clstm.GRU; Skip where this clstm has no GRU."""
    if cell == "lstm":
        return mod.LSTM
    gru = getattr(mod, "GRU", None)
    if gru is None:
        try:
            gru = importlib.import_module(mod.__name__ + ".gru").GRU
        except (ImportError, AttributeError) as exc:
            raise Skip(f"clstm: no GRU in this clstm ({exc})") from exc
    return gru


class _ClstmRunner(Runner):
    def __init__(self, net, x, dy):
        self.net, self.x, self.dy = net, x, dy

    def fwd(self):
        self.net.eval()
        self.net.forward(self.x)

    def train(self):
        net = self.net
        net.train()
        net.zero_grad()
        net.forward(self.x)
        net.backward(self.dy, input_grad=False)

    def forward_output(self):
        self.net.eval()
        return np.array(self.net.forward(self.x)[0])

    def train_grads(self):
        self.train()
        return {k: np.array(v) for k, v in self.net.grads.items()}


# --------------------------------------------------------------------------- PyTorch


class TorchPeer(Peer):
    """torch.nn.LSTM (torch.nn.GRU for a GRU shape); with onednn=False every call runs
    inside mkldnn.flags(enabled=False)."""

    def __init__(self, onednn=True):
        self.onednn = onednn
        self.name = "torch" if onednn else "torch-nodnnl"

    def available(self):
        return _import_error("torch")

    def version(self):
        import torch
        return torch.__version__

    def setup(self, shape, dtype, threads, params, x):
        import torch
        torch.set_num_threads(threads)
        kind = torch.nn.GRU if shape.cell == "gru" else torch.nn.LSTM
        module = kind(shape.I, shape.H, shape.L, dtype=getattr(torch, dtype))
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
        return _TorchRunner(module, torch.from_numpy(x),
                            torch.ones((shape.T, shape.B, shape.H), dtype=getattr(torch, dtype)),
                            self.onednn)


class _TorchRunner(Runner):
    def __init__(self, module, x, dy, onednn):
        import torch
        self.torch, self.module, self.x, self.dy = torch, module, x, dy
        self.context = (contextlib.nullcontext if onednn
                        else lambda: torch.backends.mkldnn.flags(enabled=False))

    def fwd(self):
        with self.context(), self.torch.inference_mode():
            self.module(self.x)

    def train(self):
        with self.context():
            self.module.zero_grad(set_to_none=True)
            y, _ = self.module(self.x)
            y.backward(self.dy)

    def forward_output(self):
        with self.context(), self.torch.inference_mode():
            return self.module(self.x)[0].numpy().copy()

    def train_grads(self):
        self.train()
        return {n: p.grad.numpy().copy() for n, p in self.module.named_parameters()}

    def path(self, mode):
        """Which PyTorch path one call takes: "oneDNN" (aten::mkldnn_rnn_layer) or "generic"
        (always generic for a GRU: PyTorch's oneDNN path is the LSTM's only).

        Found by profiling one call, so it tells whether mkldnn.flags(enabled=False) really
        switched the path, not only whether the timing moved.
        """
        from torch.profiler import ProfilerActivity, profile
        fn = self.fwd if mode == "fwd" else self.train
        with _quiet_fds(), profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        keys = {e.key for e in prof.key_averages()}
        return "oneDNN" if any("mkldnn_rnn" in k for k in keys) else "generic"


@contextlib.contextmanager
def _quiet_fds():
    """Silence what native code prints on fds 1 and 2 (the profiler's start/stop lines)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


# --------------------------------------------------------------------------- NumPy reference


def _load_reference():
    tests = str(REPO_ROOT / "tests")
    if not (REPO_ROOT / "tests" / "reference.py").exists():
        raise ImportError("tests/reference.py does not exist yet")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    ref = importlib.import_module("reference")
    for fn in ("reference_forward", "reference_backward", "reference_gru_forward",
               "reference_gru_backward"):
        if not hasattr(ref, fn):
            raise ImportError(f"tests/reference.py has no {fn}")
    return ref


class NumpyReferencePeer(Peer):
    """tests/reference.py: one step at a time in NumPy; its backward always computes dx."""

    name = "numpy"

    def available(self):
        try:
            _load_reference()
        except Exception as exc:
            return f"NumPy reference unusable: {exc}"
        return None

    def version(self):
        return np.__version__

    def setup(self, shape, dtype, threads, params, x):
        from bench.ceiling import blas_controller
        ref = _load_reference()
        dy = np.ones((shape.T, shape.B, shape.H), dtype=dtype)
        blas_limit = lambda: blas_controller().limit(limits=threads, user_api="blas")  # noqa: E731
        if shape.cell == "gru":
            runner = _NumpyGruRunner(ref, {k: v.copy() for k, v in params.items()}, shape.L,
                                     x, dy, blas_limit)
        else:
            layers = [{key: params[f"{key}_l{k}"].copy()
                       for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
                      for k in range(shape.L)]
            runner = _NumpyRunner(ref, layers, x, dy, blas_limit)
        if threads > 1:
            # NumPy's OpenBLAS workers spin for ~0.1 s (2^28 cycles) after each call. In
            # the rotation they took a core from whichever implementation came next:
            # clstm's 2-thread S2 training step measured 0.69x PyTorch's after this peer
            # against 1.33x with PyTorch alone. Let them go idle before the next sample.
            runner.pause_after_s = OPENBLAS_SPIN_PAUSE_S
        return runner



class _NumpyRunner(Runner):
    def __init__(self, ref, layers, x, dy, blas_limit):
        self.ref, self.layers, self.x, self.dy, self.blas_limit = ref, layers, x, dy, blas_limit

    def fwd(self):
        with self.blas_limit():
            self.ref.reference_forward(self.x, self.layers, None, None)

    def _train(self):
        with self.blas_limit():
            _, _, cache = self.ref.reference_forward(self.x, self.layers, None, None)
            return self.ref.reference_backward(self.dy, cache)

    def train(self):
        self._train()

    def forward_output(self):
        return self.ref.reference_forward(self.x, self.layers, None, None)[0]

    def train_grads(self):
        grads = self._train()[2]
        return {f"{key}_l{k}": v for k, layer in enumerate(grads) for key, v in layer.items()}

    def notes(self):
        return {"input_grad": "tests/reference.py always computes dx"}


class _NumpyGruRunner(_NumpyRunner):
    """tests/reference.py's GRU: one sequence (and one step) at a time."""

    def __init__(self, ref, params, num_layers, x, dy, blas_limit):
        self.ref, self.params, self.num_layers = ref, params, num_layers
        self.x, self.dy, self.blas_limit = x, dy, blas_limit

    def _forward(self):
        return self.ref.reference_gru_forward(self.x, self.params, self.num_layers)

    def fwd(self):
        with self.blas_limit():
            self._forward()

    def _train(self):
        with self.blas_limit():
            _, _, cache = self._forward()
            return self.ref.reference_gru_backward(self.dy, cache)

    def forward_output(self):
        return self._forward()[0]

    def train_grads(self):
        return dict(self._train()[2])


# --------------------------------------------------------------------------- Keras / TensorFlow


def swap_first_two_gate_blocks(w, hidden):
    """Rows (or entries) of three gate blocks of H: PyTorch's GRU order r, z, n <-> the
    z, r, n (h) order of Keras and ONNX. The swap is its own inverse."""
    w = np.asarray(w)
    H = hidden
    return np.concatenate([w[H:2 * H], w[:H], w[2 * H:]])


def keras_gru_weights(params, layer, hidden):
    """[kernel (I, 3H), recurrent_kernel (H, 3H), bias (2, 3H)] of a Keras GRU with
    reset_after=True (PyTorch's "linear before reset") from PyTorch-named weights."""
    sw = lambda w: swap_first_two_gate_blocks(w, hidden)  # noqa: E731
    return [sw(params[f"weight_ih_l{layer}"]).T, sw(params[f"weight_hh_l{layer}"]).T,
            np.stack([sw(params[f"bias_ih_l{layer}"]), sw(params[f"bias_hh_l{layer}"])])]


def torch_gru_grads_from_keras(layer, name, grad, hidden):
    """A Keras GRU weight's gradient under PyTorch's names (the inverse of
    keras_gru_weights)."""
    sw = lambda w: swap_first_two_gate_blocks(w, hidden)  # noqa: E731
    if name == "kernel":
        return {f"weight_ih_l{layer}": sw(grad.T)}
    if name == "recurrent_kernel":
        return {f"weight_hh_l{layer}": sw(grad.T)}
    if name == "bias":
        return {f"bias_ih_l{layer}": sw(grad[0]), f"bias_hh_l{layer}": sw(grad[1])}
    return {}



class _FixedThreads:
    """A runtime whose thread pool is sized once per process (TensorFlow)."""

    fixed_threads = None

    def _claim_threads(self, threads):
        if self.fixed_threads is None:
            self._configure_threads(threads)
            type(self).fixed_threads = threads
        if threads != self.fixed_threads:
            raise Skip(f"{self.name}: thread pool fixed at {self.fixed_threads} "
                       f"thread(s) for this process")


class KerasPeer(_FixedThreads, Peer):
    """keras.layers.LSTM stack (GRU with reset_after=True for a GRU shape; TensorFlow
    backend), batch-major, inside tf.function."""

    name = "keras"

    def available(self):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return _import_error("tensorflow") or _import_error("keras")

    def version(self):
        import keras
        import tensorflow as tf
        return f"keras {keras.__version__}, tensorflow {tf.__version__}"

    def _configure_threads(self, threads):
        if threads == os.cpu_count():
            return  # TensorFlow's default pools are sized to all cores
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as exc:  # TensorFlow already initialised elsewhere
            raise Skip(f"keras: cannot size TensorFlow's thread pool: {exc}") from exc

    def setup(self, shape, dtype, threads, params, x):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self._claim_threads(threads)
        import keras
        import tensorflow as tf
        if keras.backend.backend() != "tensorflow":
            raise Skip(f"keras: backend is {keras.backend.backend()}, not tensorflow")

        inputs = keras.Input(shape=(shape.T, shape.I), batch_size=shape.B, dtype=dtype)
        h, lstms = inputs, []
        for _ in range(shape.L):
            if shape.cell == "gru":
                lstms.append(keras.layers.GRU(shape.H, return_sequences=True,
                                              reset_after=True, dtype=dtype))
            else:
                lstms.append(keras.layers.LSTM(shape.H, return_sequences=True, dtype=dtype))
            h = lstms[-1](h)
        model = keras.Model(inputs, h)
        names = []
        for k, layer in enumerate(lstms):
            if shape.cell == "gru":
                layer.set_weights(keras_gru_weights(params, k, shape.H))
            else:
                # Keras: kernel (I, 4H), recurrent_kernel (H, 4H), one bias; gates i, f, c, o
                layer.set_weights([params[f"weight_ih_l{k}"].T, params[f"weight_hh_l{k}"].T,
                                   params[f"bias_ih_l{k}"] + params[f"bias_hh_l{k}"]])
            names += [(k, w.name) for w in layer.trainable_weights]
        return _KerasRunner(tf, model, tf.constant(np.ascontiguousarray(x.transpose(1, 0, 2))),
                            names, gru_hidden=shape.H if shape.cell == "gru" else None)


class _KerasRunner(Runner):
    def __init__(self, tf, model, x_bt, names, gru_hidden=None):
        self.x_bt, self.names, self.gru_hidden = x_bt, names, gru_hidden
        weights = model.trainable_weights

        @tf.function
        def forward(x):
            return model(x, training=False)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True))
            return tape.gradient(loss, weights)

        self._forward, self._step = forward, step

    def fwd(self):
        self._forward(self.x_bt)

    def train(self):
        self._step(self.x_bt)

    def forward_output(self):
        return self._forward(self.x_bt).numpy().transpose(1, 0, 2)

    def train_grads(self):
        out = {}
        for (k, name), g in zip(self.names, self._step(self.x_bt)):
            g = g.numpy()
            if self.gru_hidden is not None:
                out.update(torch_gru_grads_from_keras(k, name, g, self.gru_hidden))
            elif name == "kernel":
                out[f"weight_ih_l{k}"] = g.T
            elif name == "recurrent_kernel":
                out[f"weight_hh_l{k}"] = g.T
            elif name == "bias":
                out[f"bias_ih_l{k}"] = out[f"bias_hh_l{k}"] = g
        return out


# --------------------------------------------------------------------------- JAX


def jax_lstm(params, x, num_layers):
    """A stacked LSTM in JAX: one input projection per layer, then lax.scan over time."""
    import jax
    import jax.numpy as jnp

    h = x
    for k in range(num_layers):
        w_hh_t = params[f"weight_hh_l{k}"].T
        xp = h @ params[f"weight_ih_l{k}"].T + (params[f"bias_ih_l{k}"] + params[f"bias_hh_l{k}"])

        def step(carry, xp_t, w_hh_t=w_hh_t):
            h_t, c_t = carry
            i, f, g, o = jnp.split(xp_t + h_t @ w_hh_t, 4, axis=-1)
            c_t = jax.nn.sigmoid(f) * c_t + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_t = jax.nn.sigmoid(o) * jnp.tanh(c_t)
            return (h_t, c_t), h_t

        zeros = jnp.zeros(xp.shape[1:2] + w_hh_t.shape[:1], xp.dtype)
        _, h = jax.lax.scan(step, (zeros, zeros), xp)
    return h


def gru_step(xp, sigmoid, h, gi_t, w_hh_t, b_hh):
    """One GRU step, PyTorch's math, for any NumPy-like module ``xp`` (jax.numpy, or NumPy
    in the tests): gi_t = x_t W_ih^T + b_ih (B, 3H) precomputed; gates r, z, n."""
    gh = h @ w_hh_t + b_hh
    H = h.shape[-1]
    r = sigmoid(gi_t[..., :H] + gh[..., :H])
    z = sigmoid(gi_t[..., H:2 * H] + gh[..., H:2 * H])
    n = xp.tanh(gi_t[..., 2 * H:] + r * gh[..., 2 * H:])
    return (1 - z) * n + z * h


def jax_gru(params, x, num_layers):
    """A stacked GRU in JAX: one input projection per layer, then lax.scan over time."""
    import jax
    import jax.numpy as jnp

    h = x
    for k in range(num_layers):
        w_hh_t, b_hh = params[f"weight_hh_l{k}"].T, params[f"bias_hh_l{k}"]
        gi = h @ params[f"weight_ih_l{k}"].T + params[f"bias_ih_l{k}"]

        def step(h_t, gi_t, w_hh_t=w_hh_t, b_hh=b_hh):
            h_t = gru_step(jnp, jax.nn.sigmoid, h_t, gi_t, w_hh_t, b_hh)
            return h_t, h_t

        _, h = jax.lax.scan(step, jnp.zeros(gi.shape[1:2] + w_hh_t.shape[:1], gi.dtype), gi)
    return h


class JaxPeer(Peer):
    """jax_lstm (jax_gru for a GRU shape), jitted; training step = jax.grad of sum(y), jitted.

    XLA sizes its CPU thread pool when its backend starts and has no supported switch to an
    arbitrary count, so JAX runs only at its default, all cores.
    """

    name = "jax"

    def available(self):
        return _import_error("jax")

    def version(self):
        import jax
        return jax.__version__

    def setup(self, shape, dtype, threads, params, x):
        if threads != os.cpu_count():
            raise Skip(f"jax: runs only at its default thread pool ({os.cpu_count()} threads)")
        import jax
        jax.config.update("jax_enable_x64", True)  # float64 cells; float32 arrays stay float32
        jparams = {k: jax.device_put(v) for k, v in params.items()}
        L = shape.L
        rnn = jax_gru if shape.cell == "gru" else jax_lstm
        forward = jax.jit(lambda p, x: rnn(p, x, L))
        step = jax.jit(jax.grad(lambda p, x: rnn(p, x, L).sum()))
        return _JaxRunner(jax, forward, step, jparams, jax.device_put(x))


class _JaxRunner(Runner):
    def __init__(self, jax, forward, step, params, x):
        self.jax, self._forward, self._step, self.params, self.x = jax, forward, step, params, x

    def fwd(self):
        self._forward(self.params, self.x).block_until_ready()

    def train(self):
        self.jax.block_until_ready(self._step(self.params, self.x))

    def forward_output(self):
        return np.asarray(self._forward(self.params, self.x))

    def train_grads(self):
        return {k: np.asarray(v) for k, v in self._step(self.params, self.x).items()}


# --------------------------------------------------------------------------- ONNX Runtime


class OnnxRuntimePeer(Peer):
    """ONNX Runtime's CPU LSTM, inference only: one `LSTM` node per layer (bench/onnx_lstm.py);
    one `GRU` node (linear_before_reset=1) per layer for a GRU shape.

    Session: intra_op_num_threads = the cell's thread count, inter_op 1, sequential
    execution, default graph optimisations.  float64 is probed once: ONNX Runtime builds
    the session and then refuses to run it, and the cell says so.
    """

    name = "onnxruntime"

    def available(self):
        return _import_error("onnx") or _import_error("onnxruntime")

    def version(self):
        import onnx
        import onnxruntime
        return f"{onnxruntime.__version__} (onnx {onnx.__version__})"

    def setup(self, shape, dtype, threads, params, x):
        from bench import onnx_lstm
        why = onnx_lstm.dtype_unsupported(dtype, shape.cell)
        if why:
            raise Skip(f"onnxruntime: {why}")
        model = onnx_lstm.build_model(params, shape.L, shape.H, dtype, cell=shape.cell)
        runner = _OnnxRunner(onnx_lstm.make_session(model, threads), x)
        if threads > 1:
            # ONNX Runtime's intra-op threads spin for tens of milliseconds after a run
            # (its default allow_spinning): in the rotation they held the cores of
            # whichever implementation came next. Measured (Zen 4, 2 cores, S3 LSTM
            # forward): clstm's 2-thread call took 25-50 ms right after a run, 16-17 ms
            # once 50 ms had passed. Let them go idle before the next sample.
            runner.pause_after_s = ORT_SPIN_PAUSE_S
        return runner


class _OnnxRunner(Runner):
    modes = ("fwd",)

    def __init__(self, session, x):
        self.session, self.feed = session, {"X": x}

    def fwd(self):
        self.session.run(["Y"], self.feed)

    def forward_output(self):
        return self.session.run(["Y"], self.feed)[0]


# --------------------------------------------------------------------------- registry


PEERS = {
    "torch": lambda: TorchPeer(onednn=True),
    "torch-nodnnl": lambda: TorchPeer(onednn=False),
    "numpy": NumpyReferencePeer,
    "keras": KerasPeer,
    "jax": JaxPeer,
    "onnxruntime": OnnxRuntimePeer,
}


def _import_error(module):
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def _dist_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return ""
