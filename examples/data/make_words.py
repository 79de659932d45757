"""Rebuild words.tsv from the Debian word lists (maintainers only; the examples read the
shipped words.tsv and need none of this).

    apt-get install wamerican wdutch wspanish wpolish
    python examples/data/make_words.py > examples/data/words.tsv

Keeps words of 3 to 16 letters a-z only (no capitals, digits, apostrophes or accented
letters, so that no single letter gives the language away), drops every word found in
more than one of the four lists, and samples 5,000 words per language with a fixed seed.
"""
import re
import sys

import numpy as np

LISTS = {"en": "/usr/share/dict/american-english",   # wamerican (SCOWL)
         "nl": "/usr/share/dict/dutch",              # wdutch (OpenTaal)
         "es": "/usr/share/dict/spanish",            # wspanish
         "pl": "/usr/share/dict/polish"}             # wpolish (SJP.PL)
PER_LANGUAGE = 5000
WORD = re.compile(r"^[a-z]{3,16}$")


def main():
    words = {}
    for lang, path in LISTS.items():
        with open(path, encoding="utf-8") as f:
            words[lang] = {w for w in f.read().split("\n") if WORD.match(w)}
    seen = {}
    for lang_words in words.values():
        for w in lang_words:
            seen[w] = seen.get(w, 0) + 1
    rng = np.random.default_rng(20240601)
    for lang in LISTS:
        unique = sorted(w for w in words[lang] if seen[w] == 1)
        for i in sorted(rng.choice(len(unique), PER_LANGUAGE, replace=False)):
            sys.stdout.write(f"{unique[i]}\t{lang}\n")


if __name__ == "__main__":
    main()
