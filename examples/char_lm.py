"""A character-level language model on the English text that ships with Python.

    python examples/char_lm.py            # about 3 minutes on 2 (shared) cores
    python examples/char_lm.py --quick    # under a minute: 2 epochs
    python examples/char_lm.py --save char_lm.npz   # clstm.load("char_lm.npz") later
    mpiexec -n 2 python -m mpi4py examples/char_lm.py --distributed   # 2 processes

The corpus is ``pydoc_data.topics.topics``, the text of ``help("topics")`` (about
465,000 characters of Python's reference documentation, so nothing to download; its
exact content depends on the Python version). The values are joined in sorted-key
order and the last 10% of the characters are held out: the model never trains on them.
The vocabulary is the alphabet of the whole text (103 characters with Python 3.11).

The model is ``clstm.LanguageModel`` (Embedding -> LSTM -> Dense, softmax
cross-entropy), trained with ``fit`` on the character stream: truncated BPTT over
``--batch`` parallel streams (``clstm.batchify``), the LSTM state carried from chunk to
chunk, Adam and gradient-norm clipping. After each epoch the held-out text is scored as
one stream, its state carried from the first character to the last, and reported in
bits per character (cross-entropy in base 2); for scale, the script also prints the
bits per character of a unigram model (character frequencies of the training text).
At the end it prints a sample generated from a prompt.

With ``--distributed``, launched by ``mpiexec``, every process trains on its share of
the ``--batch`` streams and the gradients are summed over the processes before each step
(``clstm.distributed``): the same training as one process, to rounding; rank 0 prints,
samples and saves.
"""
import argparse
import math
import platform
import sys
import time

import numpy as np

import clstm


def load_text(max_chars=None):
    """The text of Python's ``help("topics")`` pages, joined in sorted-key order."""
    from pydoc_data.topics import topics
    text = "".join(topics[key] for key in sorted(topics))
    return text[:max_chars] if max_chars else text


def encode(text):
    """``(ids, vocab)``: one int64 id per character, ids into the sorted alphabet."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    alphabet = np.unique(codes)
    ids = np.searchsorted(alphabet, codes).astype(np.int64)
    return ids, "".join(map(chr, alphabet))


def decode(ids, vocab):
    return "".join(vocab[i] for i in ids)


def unigram_bits(train, held, vocab_size):
    """Bits per character of ``held`` under the training text's character frequencies
    (add-one smoothed, so that a character unseen in training costs finite bits)."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    return float(-np.mean(np.log2(counts[held] / counts.sum())))


def held_out_bits(model, held, streams=1):
    """Bits per character of the model on ``held``, read as ``streams`` streams with
    the state carried through each (1: the whole text as one stream). The first
    character has no context and is not scored."""
    logs = model.evaluate(held, batch_size=streams, bptt=500)
    return logs["loss"] / math.log(2)


def _threads(dist=None):
    n = clstm.get_num_threads()
    text = f"{n} thread" + ("s" if n > 1 else "")
    return text if dist is None else f"{dist.size} processes x {text}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    arg("--quick", action="store_true", help="about a minute: 2 epochs instead of 6")
    arg("--epochs", type=int, default=None, help="passes over the training text "
        "(default 6; 2 with --quick)")
    arg("--hidden", type=int, default=256, help="LSTM units (default %(default)s)")
    arg("--layers", type=int, default=1, help="LSTM layers (default %(default)s)")
    arg("--embed", type=int, default=48, help="embedding size (default %(default)s)")
    arg("--batch", type=int, default=32, help="parallel streams (default %(default)s)")
    arg("--bptt", type=int, default=64,
        help="steps per truncated-BPTT chunk (default %(default)s)")
    arg("--lr", type=float, default=3e-3, help="Adam's learning rate (default "
        "%(default)s)")
    arg("--lr-decay", type=float, default=0.5, help="multiply the learning rate by "
        "this after each epoch of the second half of training (default %(default)s)")
    arg("--clip", type=float, default=1.0,
        help="clip the gradient norm to this (default %(default)s)")
    arg("--dropout", type=float, default=0.0, help="dropout between LSTM layers and "
        "before the output layer, in training (default %(default)s)")
    arg("--holdout", type=float, default=0.1,
        help="fraction of the text, at its end, held out (default %(default)s)")
    arg("--max-chars", type=int, default=None,
        help="use only the first N characters of the text")
    arg("--eval-streams", type=int, default=1,
        help="score the held-out text as this many parallel streams (default 1: as "
             "one stream, its state carried from the first character to the last)")
    arg("--dtype", default="float32", choices=["float32", "float64"],
        help="the model's floating type (default %(default)s)")
    arg("--threads", type=int, default=0,
        help="clstm threads (default 0: clstm's default, OMP_NUM_THREADS or all cores)")
    arg("--seed", type=int, default=0,
        help="seeds the weights and the sample (default %(default)s)")
    arg("--prompt", default="The ", help="start of the sample (default %(default)r)")
    arg("--sample-length", type=int, default=300,
        help="characters to generate (default %(default)s)")
    arg("--temperature", type=float, default=0.8,
        help="sampling temperature (default %(default)s)")
    arg("--save", metavar="PATH", default=None,
        help="save the trained model there with clstm.save")
    arg("--quiet", action="store_true", help="print only the summary line")
    arg("--distributed", action="store_true", help="data-parallel over MPI: launch "
        "with mpiexec -n N python -m mpi4py examples/char_lm.py --distributed")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 6
    return args


def main(argv=None):
    """Train, report and sample; returns the results as a dict (for tests)."""
    args = parse_args(argv)
    dist = None
    if args.distributed:
        from clstm.distributed import Distributed
        dist = Distributed()
        if args.threads <= 0:
            args.threads = dist.local_threads()      # this process's share of the cores
    root = dist is None or dist.is_root
    say = (lambda *a, **k: None) if args.quiet or not root else print
    start = time.perf_counter()
    if args.threads > 0:
        clstm.set_num_threads(args.threads)

    text = load_text(args.max_chars)
    ids, vocab = encode(text)
    unknown = sorted(set(args.prompt) - set(vocab))
    if not args.prompt or unknown:
        raise SystemExit(f"--prompt: expected characters of the text, got "
                         f"{args.prompt!r} (not in the text: {unknown})")
    cut = int(len(ids) * (1 - args.holdout))
    train, held = ids[:cut], ids[cut:]
    baseline = unigram_bits(train, held[1:], len(vocab))
    say(f"corpus: pydoc_data.topics (Python {platform.python_version()}), "
        f"{len(ids):,} characters, {len(vocab)} distinct; training on {len(train):,}, "
        f"holding out the last {len(held):,}")
    say(f"unigram baseline on the held-out text: {baseline:.3f} bits/char "
        f"(uniform over the alphabet: {math.log2(len(vocab)):.3f})")

    model = clstm.LanguageModel(len(vocab), args.embed, args.hidden, args.layers,
                                dropout=args.dropout, dtype=args.dtype, seed=args.seed)
    optimizer = clstm.Adam(model, lr=args.lr)
    n_params = sum(a.size for a in model.params.values())
    say(f"model: Embedding({len(vocab)}, {args.embed}) -> LSTM({args.embed}, "
        f"{args.hidden}, layers={args.layers}) -> Dense({args.hidden}, {len(vocab)}); "
        f"{n_params:,} parameters, {args.dtype}")
    say(f"training: {args.epochs} epochs, {args.batch} streams x {args.bptt}-step "
        f"chunks, Adam lr {args.lr:g}, clip {args.clip:g}, "
        f"{_threads(dist)}")

    history = []
    clock = {"epoch_start": time.perf_counter(), "train_s": 0.0}
    chars_per_epoch = (len(train) // args.batch - 1) * args.batch  # what fit trains on

    def after_epoch(epoch, logs):
        train_s = time.perf_counter() - clock["epoch_start"]
        clock["train_s"] += train_s
        t = time.perf_counter()
        bits = held_out_bits(model, held, args.eval_streams)
        history.append(bits)
        say(f"epoch {epoch + 1}/{args.epochs}: train {logs['loss'] / math.log(2):.3f} "
            f"bits/char, held-out {bits:.3f} bits/char; "
            f"{chars_per_epoch / train_s:,.0f} chars/s ({train_s:.1f} s), "
            f"held-out scored in {time.perf_counter() - t:.1f} s", flush=True)
        if 2 * (epoch + 1) > args.epochs:  # the second half: a decaying rate
            optimizer.lr = optimizer.lr * args.lr_decay
        clock["epoch_start"] = time.perf_counter()
        return not math.isfinite(bits)  # stop on divergence

    model.fit(train, epochs=args.epochs, batch_size=args.batch, bptt=args.bptt,
              optimizer=optimizer, clip_norm=args.clip, verbose=0,
              callbacks=[after_epoch], distributed=dist)
    if not root:
        return {"bits_per_char": history[-1], "history": history, "model": model}

    prompt_ids = np.array([vocab.index(c) for c in args.prompt])
    sample = decode(model.generate(prompt_ids, args.sample_length,
                                   temperature=args.temperature, seed=args.seed), vocab)
    say(f"\nsample (prompt {args.prompt!r}, temperature {args.temperature:g}, "
        f"seed {args.seed}):\n{args.prompt}{sample}\n")

    if args.save:
        clstm.save(model, args.save)
        say(f"saved the model to {args.save} (clstm.load reads it back)")

    elapsed = time.perf_counter() - start
    throughput = chars_per_epoch * len(history) / clock["train_s"]
    print(f"char_lm: held-out bits/char: {history[-1]:.3f} (unigram baseline "
          f"{baseline:.3f}) after {len(history)} epochs, {elapsed:.0f} s; training "
          f"{throughput:,.0f} chars/s on {_threads(dist)}")
    return {"bits_per_char": history[-1], "history": history,
            "unigram_bits": baseline, "vocab_size": len(vocab),
            "chars_per_s": throughput, "seconds": elapsed, "sample": sample,
            "model": model}


if __name__ == "__main__":
    main(sys.argv[1:])
