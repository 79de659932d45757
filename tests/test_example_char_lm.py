"""examples/char_lm.py, the character-level language model, in a tiny configuration."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

import clstm

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "char_lm.py"

TINY = ["--max-chars", "20000", "--epochs", "1", "--hidden", "32", "--embed", "16",
        "--batch", "8", "--bptt", "32", "--lr", "1e-2", "--sample-length", "40",
        "--threads", "1", "--quiet"]


def load_example():
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} is not in this checkout")
    spec = importlib.util.spec_from_file_location("char_lm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_thread_count():
    # the example sets clstm's thread count; later tests expect the default back
    threads = clstm.get_num_threads()
    yield
    clstm.set_num_threads(threads)


def test_char_lm_runs(tmp_path, capsys):
    example = load_example()
    path = tmp_path / "char_lm.npz"
    result = example.main(TINY + ["--save", str(path)])

    bits = result["bits_per_char"]
    assert math.isfinite(bits)
    assert bits < result["unigram_bits"] < math.log2(result["vocab_size"])
    assert len(result["history"]) == 1 and result["chars_per_s"] > 0
    assert len(result["sample"]) == 40
    summary = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("char_lm: held-out bits/char:")]
    assert len(summary) == 1

    # the saved model scores the held-out text as the trained one did
    loaded = clstm.load(path)
    ids, _ = example.encode(example.load_text(20000))
    held = ids[int(len(ids) * 0.9):]
    assert example.held_out_bits(loaded, held) == pytest.approx(bits, rel=1e-6)


def test_char_lm_is_reproducible():
    example = load_example()
    first = example.main(TINY + ["--seed", "3"])
    second = example.main(TINY + ["--seed", "3"])
    assert first["bits_per_char"] == second["bits_per_char"]
    assert first["sample"] == second["sample"]


def test_text_round_trip():
    example = load_example()
    text = example.load_text(5000)
    ids, vocab = example.encode(text)
    assert ids.dtype == np.int64 and ids.max() < len(vocab)
    assert example.decode(ids, vocab) == text
