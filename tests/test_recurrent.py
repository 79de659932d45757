"""clstm._recurrent.RecurrentStack, the base clstm.LSTM and clstm.GRU share: it does not
register itself, and what it owns (repr, structural checks, x and lengths checks,
from_torch) says the same for both cells, naming the cell where the cell matters."""
import numpy as np
import pytest

import clstm
from clstm._recurrent import RecurrentStack
from clstm.module import Module

CELLS = {"LSTM": clstm.LSTM, "GRU": clstm.GRU}


def test_the_base_is_not_registered_and_the_cells_are():
    assert RecurrentStack not in Module.registry.values()
    assert "RecurrentStack" not in Module.registry
    assert Module.registry["LSTM"] is clstm.LSTM and Module.registry["GRU"] is clstm.GRU


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_repr_shows_the_options_away_from_their_defaults_in_the_constructors_order(cell):
    cls = CELLS[cell]
    assert repr(cls(3, 4)) == f"{cell}(3, 4, dtype='float32')"
    net = cls(3, 4, 2, bias=False, bidirectional=True, dtype="float64", dropout=0.5,
              batch_first=True)
    assert repr(net) == (f"{cell}(3, 4, num_layers=2, bias=False, bidirectional=True, "
                         f"dtype='float64', dropout=0.5, batch_first=True)")


def test_lstm_repr_places_its_own_options():
    assert repr(clstm.LSTM(3, 4, proj_size=2, peephole=True)) == \
        "LSTM(3, 4, proj_size=2, dtype='float32', peephole=True)"


@pytest.mark.parametrize("cell, gates", [("LSTM", 4), ("GRU", 3)])
def test_hidden_size_is_bounded_by_the_cells_gate_count(cell, gates):
    limit = (2**31 - 1) // gates
    with pytest.raises(ValueError, match=rf"hidden_size.*{gates} \* hidden_size must fit"):
        CELLS[cell](1, limit + 1)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("options, error, message", [
    (dict(bias=1), TypeError, "bias: expected True or False, got 1"),
    (dict(bidirectional="yes"), TypeError, "bidirectional: expected True or False"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a probability in \[0, 1\)"),
    (dict(dropout=True), ValueError, r"dropout: expected a probability in \[0, 1\)"),
])
def test_bad_options_are_refused_alike(cell, options, error, message):
    with pytest.raises(error, match=message):
        CELLS[cell](3, 4, **options)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("lengths, error, message", [
    ([1.0, 2.0], TypeError, "lengths: expected integers"),
    ([True, False], TypeError, "lengths: expected integers"),
    ([1, 2, 3], ValueError, r"lengths: expected shape \(2,\) \(one per sequence\)"),
    ([0, 2], ValueError, r"lengths: expected integers in \[1, 3\], got min 0, max 2"),
    ([1, 4], ValueError, r"lengths: expected integers in \[1, 3\], got min 1, max 4"),
])
def test_bad_lengths_are_refused_alike(cell, lengths, error, message):
    net = CELLS[cell](5, 4)
    with pytest.raises(error, match=message):
        net.forward(np.zeros((3, 2, 5), np.float32), lengths=lengths)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_bad_x_is_refused_alike(cell):
    net = CELLS[cell](5, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"x: expected a 3-D array \(B, T, 5\)"):
        net.forward(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="x: expected 5 features in the last axis"):
        net.forward(np.zeros((2, 3, 6), np.float32))
    with pytest.raises(ValueError, match="at least one time step and one sequence"):
        net.forward(np.zeros((0, 3, 5), np.float32))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_from_torch_names_the_cells_torch_class(cell):
    torch = pytest.importorskip("torch")
    other = torch.nn.GRU(3, 4) if cell == "LSTM" else torch.nn.LSTM(3, 4)
    with pytest.raises(TypeError, match=f"from_torch: expected a torch.nn.{cell}, got "
                                        f"{type(other).__name__}"):
        CELLS[cell].from_torch(other)
    module = getattr(torch.nn, cell)(3, 4, num_layers=2, batch_first=True).double().eval()
    net = CELLS[cell].from_torch(module)
    assert type(net) is CELLS[cell] and net.batch_first and not net.training
    assert net.dtype == np.float64 and net.num_layers == 2
    back = net.to_torch()
    assert type(back) is type(module)
    for name, tensor in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy())
