"""Tell the language of a single word from its spelling: a character-level LSTM over
variable-length sequences (Embedding -> LSTM -> last valid step -> Dense).

    python examples/classify.py            # about 30 s to a minute on two cores
    python examples/classify.py --seed 3   # another initialisation and shuffling
    python examples/classify.py --cell gru # a GRU in place of the LSTM

The data are 20,000 words, 5,000 each of English, Dutch, Spanish and Polish, sampled from
Debian's word lists (examples/data/README.md gives the sources and licences). Only words
spelled with the letters a-z are kept, so no accented letter gives the language away,
and words found in more than one list are dropped. Words are 3 to 16 letters long: each
is a sequence of letter ids padded at the end, and ``lengths`` tells the model where each
word ends, so the class is read at its last letter and the padding changes nothing.

A fixed 20 % of the words (the same for every ``--seed``) is held out for the final test;
10 % of the rest is a validation set whose accuracy is printed after every epoch. The
LSTM (or the GRU, ``--cell gru``) is compared with the majority class and with two bag-of-n-grams baselines that
ignore letter order beyond n: multinomial logistic regression on letter frequencies and
on letter-bigram frequencies (word boundaries included), trained with NumPy.
"""
import argparse
import os
import sys
import time

import numpy as np

import clstm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "words.tsv")
SPLIT_SEED = 2024   # the held-out words do not depend on --seed


def load_words(path=DATA):
    """(words, language codes) from a two-column TSV."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [w for w, _ in rows], [lang for _, lang in rows]


def encode(words, alphabet):
    """Letter ids padded at the end with 0: (N, longest) int64, and the lengths (N,)."""
    index = {ch: i + 1 for i, ch in enumerate(alphabet)}
    lengths = np.array([len(w) for w in words])
    ids = np.zeros((len(words), lengths.max()), dtype=np.int64)
    for row, word in enumerate(words):
        ids[row, :len(word)] = [index[ch] for ch in word]
    return ids, lengths


def ngram_features(words, n, vocabulary=None):
    """Relative frequencies of the n-grams of '^word$' (letters alone for n = 1).

    The vocabulary comes from the words given when it is None (pass the training
    words' vocabulary for the test words)."""
    grams = [list(w) if n == 1 else [f"^{w}$"[i:i + n] for i in range(len(w) + 3 - n)]
             for w in words]
    if vocabulary is None:
        vocabulary = {g: i for i, g in enumerate(sorted({g for gs in grams for g in gs}))}
    features = np.zeros((len(words), len(vocabulary)), dtype=np.float32)
    for row, gs in enumerate(grams):
        for g in gs:
            if g in vocabulary:
                features[row, vocabulary[g]] += 1
    features /= np.maximum(features.sum(axis=1, keepdims=True), 1)
    return features, vocabulary


def logistic_regression(x, y, num_classes, *, steps=500, lr=0.05, l2=1e-4):
    """Multinomial logistic regression by full-batch Adam; returns a predict function."""
    x = np.column_stack([x, np.ones(len(x), dtype=np.float32)]).astype(np.float32)
    w = np.zeros((x.shape[1], num_classes), dtype=np.float32)
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    m, v = np.zeros_like(w), np.zeros_like(w)
    for step in range(1, steps + 1):
        probs = clstm.softmax(x @ w)
        grad = x.T @ (probs - onehot) / len(x) + l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        w -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return lambda xs: np.column_stack([xs, np.ones(len(xs), dtype=np.float32)]) @ w


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--embed", type=int, default=16)
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm",
                        help="the recurrent layer (default: lstm)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only this many words (a quick look; default: all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="clstm threads (default 0: clstm's default, OMP_NUM_THREADS "
                             "or all cores)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        clstm.set_num_threads(args.threads)
    start = time.perf_counter()
    words, langs = load_words()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(words))
    if args.limit:
        order = order[:args.limit]
    words = [words[i] for i in order]
    names = sorted(set(langs))
    labels = np.array([names.index(langs[i]) for i in order])
    n_test = len(words) // 5
    n_val = (len(words) - n_test) // 10
    test = np.arange(n_test)
    val = np.arange(n_test, n_test + n_val)
    train = np.arange(n_test + n_val, len(words))
    alphabet = sorted(set("".join(words)))
    ids, lengths = encode(words, alphabet)
    print(f"{len(words)} words, {len(names)} languages ({', '.join(names)}), "
          f"{lengths.min()}-{lengths.max()} letters; train {len(train)}, validation "
          f"{len(val)}, test {len(test)}")

    # Baselines.
    majority = float(np.mean(labels[test] == np.bincount(labels[train]).argmax()))
    baselines = {}
    for n, name in ((1, "letters"), (2, "letter bigrams")):
        x_train, vocabulary = ngram_features([words[i] for i in train], n)
        x_test, _ = ngram_features([words[i] for i in test], n, vocabulary)
        predict = logistic_regression(x_train, labels[train], len(names))
        baselines[name] = float(np.mean(predict(x_test).argmax(axis=1) == labels[test]))

    # The LSTM (or GRU): token ids (N, T) and lengths; padding id 0 keeps a zero
    # embedding.
    model = clstm.Classifier(hidden_size=args.hidden, num_classes=len(names),
                             vocab_size=len(alphabet) + 1, embed_dim=args.embed,
                             padding_idx=0, cell=args.cell, seed=args.seed)
    fit_start = time.perf_counter()
    model.fit(ids[train], labels[train], lengths=lengths[train], epochs=args.epochs,
              batch_size=args.batch_size, seed=args.seed,
              optimizer=clstm.Adam(model, lr=args.lr), clip_norm=5.0,
              validation_data=(ids[val], labels[val], lengths[val]),
              verbose=0 if args.quiet else 1)
    fit_seconds = time.perf_counter() - fit_start   # the network alone, not the baselines
    result = model.evaluate(ids[test], labels[test], lengths=lengths[test])
    accuracy = float(result["accuracy"])
    predicted = model.predict(ids[test], lengths=lengths[test])
    confusion = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(confusion, (labels[test], predicted), 1)

    elapsed = time.perf_counter() - start
    print("held-out confusion (rows: true, columns: predicted):")
    print("      " + " ".join(f"{n:>5}" for n in names))
    for name, row in zip(names, confusion):
        print(f"  {name:>3} " + " ".join(f"{c:5d}" for c in row))
    print(f"held-out accuracy on {len(test)} words:")
    rows = [("majority class", majority),
            ("logistic regression, letter frequencies", baselines["letters"]),
            ("logistic regression, letter bigrams", baselines["letter bigrams"]),
            (f"{args.cell.upper()}({args.hidden}) over the letters, {args.epochs} epochs",
             accuracy)]
    for label, value in rows:
        print(f"  {label:<42} {value:.3f}")
    print(f"classify: language of a word ({len(names)} languages, {len(test)} held-out "
          f"words), accuracy {args.cell.upper()} {accuracy:.3f} vs bigram LR "
          f"{baselines['letter bigrams']:.3f} vs letter LR {baselines['letters']:.3f} vs "
          f"majority {majority:.3f} (seed {args.seed}, {elapsed:.0f} s, of which "
          f"{args.cell.upper()} training {fit_seconds:.1f} s)")
    return {"cell": args.cell, "accuracy": accuracy, "loss": float(result["loss"]), "majority": majority,
            "letter_lr": baselines["letters"], "bigram_lr": baselines["letter bigrams"],
            "confusion": confusion, "seconds": elapsed, "fit_seconds": fit_seconds}


if __name__ == "__main__":
    main(sys.argv[1:])
