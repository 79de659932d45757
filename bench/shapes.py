"""The benchmark grid, and the work each cell asks for: FLOPs and the GEMMs it cannot avoid."""

from dataclasses import dataclass

MODES = ("fwd", "train")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Shape:
    """One LSTM workload: time-major input (T, B, I), hidden size H, L stacked layers."""

    name: str
    B: int
    T: int
    I: int  # noqa: E741 (the name used in every LSTM paper)
    H: int
    L: int

    def input_sizes(self):
        """Input width of each layer: I for the first, H for the ones stacked above it."""
        return [self.I] + [self.H] * (self.L - 1)

    def label(self):
        return f"{self.name} (B={self.B}, T={self.T}, I={self.I}, H={self.H}, L={self.L})"


SHAPES = {
    s.name: s
    for s in (
        Shape("S1", B=1, T=100, I=64, H=64, L=1),
        Shape("S2", B=16, T=200, I=128, H=128, L=1),
        Shape("S3", B=32, T=100, I=256, H=256, L=1),
        Shape("S4", B=64, T=50, I=512, H=512, L=1),
        Shape("S5", B=64, T=64, I=128, H=512, L=2),
    )
}


def forward_flops(shape):
    """2·T·B·(I_k + H)·4H summed over layers: the multiply-adds of the gate pre-activations."""
    return sum(2 * shape.T * shape.B * (i_k + shape.H) * 4 * shape.H for i_k in shape.input_sizes())


def step_flops(shape, mode):
    """FLOPs credited to one call: a forward pass, or 3x that for a training step."""
    return forward_flops(shape) * (3 if mode == "train" else 1)


@dataclass(frozen=True)
class Gemm:
    """`count` products C (m x n) = A (m x k) · B (k x n)."""

    m: int
    n: int
    k: int
    count: int
    what: str

    @property
    def flops(self):
        return 2 * self.m * self.n * self.k * self.count


def ideal_gemms(shape, mode, input_grad=False):
    """The GEMMs an ideal LSTM implementation must run for one call, layer by layer.

    Forward, per layer: the input projection of all steps at once (TB x I_k)·(I_k x 4H) and
    T recurrent products (B x H)·(H x 4H).  Training adds T recurrent backward products
    (B x 4H)·(4H x H), the weight gradients (4H x TB)·(TB x I_k) and (4H x TB)·(TB x H), and
    the input gradient (TB x 4H)·(4H x I_k).  The input gradient of layer 0 is needed only
    when the caller asks for it; the layers above it must always pass one down.
    """
    T, B, H = shape.T, shape.B, shape.H
    TB, G = T * B, 4 * H
    gemms = []
    for layer, i_k in enumerate(shape.input_sizes()):
        tag = f"l{layer}"
        gemms.append(Gemm(TB, G, i_k, 1, f"{tag} input projection"))
        gemms.append(Gemm(B, G, H, T, f"{tag} recurrent"))
        if mode == "train":
            gemms.append(Gemm(B, H, G, T, f"{tag} recurrent backward"))
            gemms.append(Gemm(G, i_k, TB, 1, f"{tag} dW_ih"))
            gemms.append(Gemm(G, H, TB, 1, f"{tag} dW_hh"))
            if layer > 0 or input_grad:
                gemms.append(Gemm(TB, i_k, G, 1, f"{tag} input gradient"))
    return gemms


def parse_shapes(text):
    names = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
    return [SHAPES[n] for n in names]
