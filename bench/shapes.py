"""The benchmark grid, and the work each cell asks for: FLOPs and the GEMMs it cannot avoid."""

from dataclasses import dataclass, replace

MODES = ("fwd", "train")
DTYPES = ("float32", "float64")
#: The recurrent cells the grid can time, and their gate blocks: an LSTM's i, f, g, o
#: (4H rows of weights), a GRU's r, z, n (3H).
GATES = {"lstm": 4, "gru": 3}
CELLS = tuple(GATES)


@dataclass(frozen=True)
class Shape:
    """One workload: time-major input (T, B, I), hidden size H, L stacked layers of an
    LSTM (the grid's default) or a GRU (``with_cell(shape, "gru")``)."""

    name: str
    B: int
    T: int
    I: int  # noqa: E741 (the name used in every LSTM paper)
    H: int
    L: int
    cell: str = "lstm"

    @property
    def gates(self):
        """Gate blocks of H rows each in the weights: 4 for an LSTM, 3 for a GRU."""
        return GATES[self.cell]

    def input_sizes(self):
        """Input width of each layer: I for the first, H for the ones stacked above it."""
        return [self.I] + [self.H] * (self.L - 1)

    def label(self):
        cell = "" if self.cell == "lstm" else f", {self.cell.upper()}"
        return (f"{self.name} (B={self.B}, T={self.T}, I={self.I}, H={self.H}, "
                f"L={self.L}{cell})")


def with_cell(shape, cell):
    """The same shape for another cell ("lstm" or "gru")."""
    if cell not in GATES:
        raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")
    return replace(shape, cell=cell)


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
    """2·T·B·(I_k + H)·G·H summed over layers (G = 4 gate blocks for an LSTM, 3 for a GRU):
    the multiply-adds of the gate pre-activations."""
    return sum(2 * shape.T * shape.B * (i_k + shape.H) * shape.gates * shape.H
               for i_k in shape.input_sizes())


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
    """The GEMMs an ideal LSTM (or GRU) implementation must run for one call, layer by layer.

    Forward, per layer: the input projection of all steps at once (TB x I_k)·(I_k x G) and
    T recurrent products (B x H)·(H x G), G = 4H for an LSTM, 3H for a GRU (whose reset
    gate multiplies the recurrent product after it, so it is one product too).  Training
    adds T recurrent backward products (B x G)·(G x H), the weight gradients
    (G x TB)·(TB x I_k) and (G x TB)·(TB x H), and the input gradient (TB x G)·(G x I_k).
    The input gradient of layer 0 is needed only when the caller asks for it; the layers
    above it must always pass one down.
    """
    T, B, H = shape.T, shape.B, shape.H
    TB, G = T * B, shape.gates * H
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


def parse_cells(text):
    """"lstm", "gru" or "both" (or a comma list) -> the cells, in CELLS order."""
    names = {c.strip().lower() for c in text.split(",") if c.strip()}
    if "both" in names:
        names = (names - {"both"}) | set(CELLS)
    unknown = sorted(names - set(CELLS))
    if unknown or not names:
        raise ValueError(f"unknown cell(s) {unknown or [text]}; known: "
                         f"{', '.join(CELLS)} or both")
    return [c for c in CELLS if c in names]


def parse_shape(text):
    """One shape: a grid name (S1..S5, any case) or a custom one as "B:T:I:H:L" (or
    "B,T,I,H,L"), named by its sizes (B1T300I24H48L1). ValueError otherwise."""
    text = text.strip()
    if text.upper() in SHAPES:
        return SHAPES[text.upper()]
    try:
        B, T, I, H, L = (int(v) for v in text.replace(",", ":").split(":"))  # noqa: E741
    except ValueError:
        raise ValueError(f"shape: expected a grid name ({','.join(SHAPES)}) or B:T:I:H:L "
                         f"(five positive integers), got {text!r}") from None
    if min(B, T, I, H, L) < 1:
        raise ValueError(f"shape: B, T, I, H and L must be at least 1, got {text!r}")
    return Shape(f"B{B}T{T}I{I}H{H}L{L}", B=B, T=T, I=I, H=H, L=L)


def shape_spec(shape):
    """The text parse_shape reads back into `shape` (for a subprocess's command line)."""
    if SHAPES.get(shape.name) == replace(shape, cell="lstm"):
        return shape.name
    return f"{shape.B}:{shape.T}:{shape.I}:{shape.H}:{shape.L}"


def parse_shapes(text):
    """A comma list of shapes, each a grid name or B:T:I:H:L ("S2,8:150:40:96:1"); with
    a ';' in it, a ';' list, whose items may be written B,T,I,H,L."""
    items = text.split(";") if ";" in text else text.split(",")
    shapes = [parse_shape(item) for item in items if item.strip()]
    if not shapes:
        raise ValueError(f"shapes: expected at least one shape, got {text!r}")
    return shapes
