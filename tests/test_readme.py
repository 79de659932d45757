"""The README's short example must run as printed: it is the first code a user copies."""
import pathlib
import re

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
