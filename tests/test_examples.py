"""Smoke tests of the examples under examples/: each runs through its main(argv) on a
tiny configuration (a few seconds), prints its summary line and returns finite metrics.
The full runs, whose numbers the README quotes, take minutes and are not run here."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

import clstm

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The examples set clstm's thread count (to 1 by default): restore it afterwards,
    so that the tests after these see the count they would otherwise have."""
    threads = clstm.get_num_threads()
    yield
    clstm.set_num_threads(threads)


def load_example(name):
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} is not next to the tests (installed elsewhere)")
    spec = importlib.util.spec_from_file_location(f"clstm_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary_line(out, prefix):
    lines = [line for line in out.splitlines() if line.startswith(prefix + ":")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forecast_runs(capsys, cell):
    forecast = load_example("forecast")
    result = forecast.main(["--members", "2", "--max-epochs", "3", "--seed", "1",
                            "--cell", cell])
    line = summary_line(capsys.readouterr().out, "forecast")
    assert f"RMSE {cell.upper()} " in line and result["cell"] == cell
    assert result["rnn_rmse"] == result["lstm_rmse"]
    # the training time is reported (its value is the bench's business, not a test's)
    assert isinstance(result["fit_seconds"], float)
    assert f"training {result['fit_seconds']:.1f} s" in line
    for key in ("rnn_rmse", "ar_rmse", "persistence_rmse", "cycle_persistence_rmse"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert 1 <= result["epochs"] <= 3
    # The baselines do not depend on the network: AR(12) on the held-out years is far
    # better than repeating last year's value.
    assert result["ar_rmse"] < 0.7 * result["persistence_rmse"]


def test_forecast_data_and_windows():
    forecast = load_example("forecast")
    years, counts = forecast.load_sunspots()
    assert years[0] == 1700 and years[-1] == 2008 and len(years) == 309
    assert np.all(np.diff(years) == 1) and np.all(counts >= 0)
    inputs, targets, idx = forecast.windows(np.arange(10.0), 3)
    assert inputs.shape == (7, 3) and np.array_equal(inputs[0], [0, 1, 2])
    assert targets[0] == 3 and idx[0] == 3 and targets[-1] == 9


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_classify_runs(capsys, cell):
    classify = load_example("classify")
    result = classify.main(["--limit", "1200", "--epochs", "2", "--hidden", "32",
                            "--quiet", "--cell", cell])
    line = summary_line(capsys.readouterr().out, "classify")
    assert f"accuracy {cell.upper()} " in line and result["cell"] == cell
    # the training time is reported (its value is the bench's business, not a test's)
    assert isinstance(result["fit_seconds"], float)
    assert f"training {result['fit_seconds']:.1f} s" in line
    for key in ("accuracy", "loss", "majority", "letter_lr", "bigram_lr"):
        assert math.isfinite(result[key]), key
    assert result["confusion"].sum() == 240
    assert result["accuracy"] > result["majority"] + 0.1
    assert result["bigram_lr"] > result["majority"] + 0.1


def test_classify_data():
    classify = load_example("classify")
    words, langs = classify.load_words()
    assert len(words) == 20000
    assert sorted(set(langs)) == ["en", "es", "nl", "pl"]
    assert all(langs.count(lang) == 5000 for lang in set(langs))
    assert len(set(words)) == len(words)   # no word in two languages
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 16
               for w in words)
    ids, lengths = classify.encode(["ab", "abc"], "abc")
    assert ids.tolist() == [[1, 2, 0], [1, 2, 3]] and lengths.tolist() == [2, 3]


def test_adding_problem_runs_and_repeats(capsys):
    adding = load_example("adding_problem")
    argv = ["--length", "20", "--train", "256", "--val", "64", "--test", "128",
            "--hidden", "16", "--epochs", "2", "--quiet", "--seed", "3"]
    first = adding.main(argv)
    summary_line(capsys.readouterr().out, "adding_problem")
    assert math.isfinite(first["mse"]) and first["epochs"] == 2
    assert 0.08 < first["baseline"] < 0.3            # about 1/6
    assert adding.main(argv)["mse"] == first["mse"]  # the same seed gives the same run


def test_adding_data():
    adding = load_example("adding_problem")
    x, y = adding.adding_data(50, 10, np.random.default_rng(0))
    assert x.shape == (50, 10, 2) and y.shape == (50,)
    assert np.all(x[:, :, 1].sum(axis=1) == 2)
    assert np.all(x[:, :5, 1].sum(axis=1) == 1)      # one marker in each half
    assert np.allclose((x[:, :, 0] * x[:, :, 1]).sum(axis=1), y)


def test_sentiment_runs(capsys):
    sentiment = load_example("sentiment")
    result = sentiment.main(["--limit", "600", "--epochs", "2", "--hidden", "16",
                             "--embed", "16", "--quiet"])
    summary_line(capsys.readouterr().out, "sentiment")
    for key in ("accuracy", "loss", "majority", "bow_lr"):
        assert math.isfinite(result[key]), key


def test_sentiment_data():
    sentiment = load_example("sentiment")
    sentences, labels = sentiment.load_sentences()
    assert len(sentences) == 3000 and labels.mean() == 0.5
    assert sentiment.tokenize("Not good, at ALL!") == ["not", "good", ",", "at", "all", "!"]
    ids, lengths = sentiment.encode([["a", "b"], ["c"]], {"a": 2, "b": 3})
    assert ids.tolist() == [[2, 3], [1, 0]] and lengths.tolist() == [2, 1]
