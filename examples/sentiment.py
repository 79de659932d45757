"""Sentiment of a review sentence: a bidirectional word-level LSTM over sentences of
different lengths (Embedding -> bidirectional LSTM -> both ends -> Dense), against a
bag-of-words logistic regression and the majority class.

    python examples/sentiment.py            # about a minute on two cores
    python examples/sentiment.py --seed 3   # another initialisation and shuffling

The data are the 3000 labelled sentences of "Sentiment Labelled Sentences" (UCI; reviews
from IMDB, Amazon and Yelp, half positive; examples/data/sentiment/SOURCE.md gives the
source and licence). Sentences are lower-cased word ids, padded at the end; ``lengths``
tells the model where each one ends, so the LSTM runs each sentence over its own words
only (padded steps are not computed) and the classifier reads the forward direction at
the last word and the reverse direction at the first.

A fixed 20 % of the sentences (the same for every ``--seed``) is held out for the final
test; 10 % of the rest is a validation set. Words seen fewer than twice in the training
sentences share one "unknown" id. The baseline is a logistic regression on which words a
sentence holds (its L2 weight chosen on the validation set), written with NumPy. On
these 2,160 training sentences it is a hard baseline: word order adds little that the
LSTM can learn from so few examples.
"""
import argparse
import os
import re
import sys
import time

import numpy as np

import clstm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentiment")
FILES = ("imdb_labelled.txt", "amazon_cells_labelled.txt", "yelp_labelled.txt")
SPLIT_SEED = 2024   # the held-out sentences do not depend on --seed


def load_sentences(path=DATA):
    """(sentences, labels 0/1) from the three ``sentence<TAB>label`` files."""
    sentences, labels = [], []
    for name in FILES:
        with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                text, _, label = line.rstrip("\n").rpartition("\t")
                if text.strip():
                    sentences.append(text.strip())
                    labels.append(int(label))
    return sentences, np.array(labels)


def tokenize(sentence):
    """Lower-cased words, and punctuation marks as words of their own."""
    return re.findall(r"[a-z0-9']+|[!?.,;:()]", sentence.lower())


def vocabulary(token_lists, min_count=2):
    """Word -> id from 2 on (0 pads, 1 is the unknown word), for words seen min_count
    times."""
    counts = {}
    for tokens in token_lists:
        for w in tokens:
            counts[w] = counts.get(w, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= min_count)
    return {w: i + 2 for i, w in enumerate(words)}


def encode(token_lists, vocab, max_len=64):
    """Word ids padded at the end with 0: (N, longest) int64, and the lengths (N,)."""
    lists = [[vocab.get(w, 1) for w in tokens][:max_len] or [1] for tokens in token_lists]
    lengths = np.array([len(ids) for ids in lists])
    ids = np.zeros((len(lists), lengths.max()), dtype=np.int64)
    for row, seq in enumerate(lists):
        ids[row, :len(seq)] = seq
    return ids, lengths


def bag_of_words(ids, lengths, size):
    """Which words each sentence holds (the unknown word included), (N, size) 0/1."""
    x = np.zeros((len(ids), size), dtype=np.float32)
    for row, (seq, n) in enumerate(zip(ids, lengths)):
        x[row, seq[:n]] = 1
    return x


def logistic_regression(x, y, *, steps=500, lr=0.05, l2=1e-4):
    """Binary logistic regression by full-batch Adam; returns a predict function."""
    x = np.column_stack([x, np.ones(len(x), dtype=np.float32)]).astype(np.float32)
    w = np.zeros(x.shape[1], dtype=np.float32)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for step in range(1, steps + 1):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(x) + l2 * w
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        w -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return lambda xs: (np.column_stack([xs, np.ones(len(xs), dtype=np.float32)]) @ w) > 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only this many sentences (a quick look; default: all)")
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
    sentences, labels = load_sentences()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(sentences))
    if args.limit:
        order = order[:args.limit]
    tokens = [tokenize(sentences[i]) for i in order]
    labels = labels[order]
    n_test = len(tokens) // 5
    n_val = (len(tokens) - n_test) // 10
    test = np.arange(n_test)
    val = np.arange(n_test, n_test + n_val)
    train = np.arange(n_test + n_val, len(tokens))
    vocab = vocabulary([tokens[i] for i in train])
    ids, lengths = encode(tokens, vocab)
    print(f"{len(tokens)} sentences ({labels.mean():.0%} positive), {len(vocab)} words seen "
          f"twice in training, {lengths.min()}-{lengths.max()} words; train {len(train)}, "
          f"validation {len(val)}, test {len(test)}")

    majority = float(np.mean(labels[test] == np.bincount(labels[train]).argmax()))
    size = len(vocab) + 2
    # The baseline's L2 weight is the one of a few that does best on the validation set.
    x_train, x_val, x_test = (bag_of_words(ids[part], lengths[part], size)
                              for part in (train, val, test))
    fits = [(float(np.mean(p(x_val) == labels[val])), l2, p) for l2, p in
            ((l2, logistic_regression(x_train, labels[train], l2=l2))
             for l2 in (1e-3, 1e-4, 1e-5))]
    _, l2, predict = max(fits, key=lambda f: f[0])
    bow = float(np.mean(predict(x_test) == labels[test]))

    model = clstm.Classifier(hidden_size=args.hidden, num_classes=2, vocab_size=size,
                             embed_dim=args.embed, bidirectional=True,
                             dropout=args.dropout, padding_idx=0, seed=args.seed)
    model.fit(ids[train], labels[train], lengths=lengths[train], epochs=args.epochs,
              batch_size=args.batch_size, seed=args.seed,
              optimizer=clstm.Adam(model, lr=args.lr), clip_norm=5.0,
              validation_data=(ids[val], labels[val], lengths[val]),
              verbose=0 if args.quiet else 1)
    result = model.evaluate(ids[test], labels[test], lengths=lengths[test])
    accuracy = float(result["accuracy"])

    elapsed = time.perf_counter() - start
    print(f"held-out accuracy on {len(test)} sentences:")
    rows = [("majority class", majority),
            (f"logistic regression, bag of words (L2 {l2:g})", bow),
            (f"bidirectional LSTM({args.hidden}), {args.epochs} epochs", accuracy)]
    for label, value in rows:
        print(f"  {label:<46} {value:.3f}")
    print(f"sentiment: {len(test)} held-out sentences, accuracy bidirectional LSTM "
          f"{accuracy:.3f} vs bag-of-words LR {bow:.3f} vs majority {majority:.3f} "
          f"(seed {args.seed}, {elapsed:.0f} s)")
    return {"accuracy": accuracy, "loss": float(result["loss"]), "majority": majority,
            "bow_lr": bow, "seconds": elapsed}


if __name__ == "__main__":
    main(sys.argv[1:])
