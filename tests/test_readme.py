"""The README's short example must run as printed: it is the first code a user copies."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading):
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_short_example_runs():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed elsewhere)")
    code = python_block_after("## A short example")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (50, 16, 32)
    assert namespace["y2"].shape == (10, 16, 32)
    assert namespace["dx"].shape == (50, 16, 8)


def test_gru_example_runs_after_the_short_example():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed elsewhere)")
    namespace = {}
    for heading in ("## A short example", "### GRU"):
        exec(compile(python_block_after(heading), "README.md", "exec"), namespace)
    assert namespace["y"].shape == (50, 16, 64)
    assert namespace["h_n"].shape == (4, 16, 32)
    assert namespace["dx"].shape == (50, 16, 8)
    assert namespace["dh0"].shape == (4, 16, 32)


def test_onnx_example_runs(tmp_path, monkeypatch):
    """The ONNX section's code, as printed (it writes its .onnx files to the current
    directory: a temporary one here)."""
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed elsewhere)")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("## ONNX"), "README.md", "exec"), namespace)
    assert namespace["probs"].shape == (4, 3)
    back, gru = namespace["back"], namespace["gru"]
    assert type(back).__name__ == "GRU" and back.bidirectional and back.num_layers == 2
    x = np.random.default_rng(1).standard_normal((5, 2, 8)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x)[0], gru.eval().forward(x)[0])
