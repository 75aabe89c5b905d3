#!/usr/bin/env python3
"""Independent reference for moetrain's byte-level BPE (docs/tokenizer.md).

Usage: bpe_reference.py TOKENIZER_JSON TEXTS_JSON [--own]

TEXTS_JSON is a JSON list of strings. Prints to stdout a JSON object
{"implementation": ..., "ids": [[id, ...] per text]} that can be diffed with
tokenizer/testdata/expected.json.

With Hugging Face `tokenizers` importable (and without --own), the ids are
Tokenizer.from_file(...).encode(text, add_special_tokens=False).ids.
Otherwise the script's own implementation, written from the GPT-2 /
Hugging Face byte-level BPE description (not from moetrain's Go code), is
used: added tokens are cut out of the text (leftmost, then longest match),
each remaining piece gets a leading space if add_prefix_space is set, is
split by GPT-2's pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
(evaluated by a small backtracking matcher, since Python's re has no \\p{..}),
mapped to GPT-2's printable byte alphabet, and merged pair by pair, always
the lowest-ranked adjacent pair first, every occurrence of it left to right.
Python 3 standard library only.
"""

import json
import sys
import unicodedata


def byte_alphabet():
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves,
    the remaining bytes, in increasing order, to chr(256), chr(257), ..."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# Character tests of the pattern. \s is Oniguruma's Unicode whitespace (what
# Hugging Face tokenizers compiles the pattern with).
def is_space(ch):
    cp = ord(ch)
    return 9 <= cp <= 13 or cp == 0x85 or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def is_letter(ch):
    return unicodedata.category(ch).startswith("L")


def is_number(ch):
    return unicodedata.category(ch).startswith("N")


def is_other(ch):
    return not (is_space(ch) or is_letter(ch) or is_number(ch))


CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]


def alt_contraction(s, i):
    for c in CONTRACTIONS:
        if s.startswith(c, i):
            return len(c)
    return None


def alt_optional_space_run(pred):
    """` ?X+`: try with the optional space first (greedy), then without."""

    def match(s, i):
        for start in ((i + 1, i) if s.startswith(" ", i) else (i,)):
            j = start
            while j < len(s) and pred(s[j]):
                j += 1
            if j > start:
                return j - i
        return None

    return match


def alt_space_not_before_nonspace(s, i):
    """`\\s+(?!\\S)`: the longest whitespace run after which the text ends or
    another whitespace character follows (backtracking one at a time)."""
    j = i
    while j < len(s) and is_space(s[j]):
        j += 1
    while j > i:
        if j == len(s) or is_space(s[j]):
            return j - i
        j -= 1
    return None


def alt_space_run(s, i):
    j = i
    while j < len(s) and is_space(s[j]):
        j += 1
    return (j - i) if j > i else None


ALTERNATIVES = [
    alt_contraction,
    alt_optional_space_run(is_letter),
    alt_optional_space_run(is_number),
    alt_optional_space_run(is_other),
    alt_space_not_before_nonspace,
    alt_space_run,
]


def pretokenize(s):
    words, i = [], 0
    while i < len(s):
        for alt in ALTERNATIVES:
            n = alt(s, i)
            if n:
                break
        else:  # cannot happen: every character is space, letter, number or other
            raise ValueError("no alternative matches at %d" % i)
        words.append(s[i:i + n])
        i += n
    return words


class OwnBPE:
    def __init__(self, spec):
        model = spec["model"]
        if model.get("type") != "BPE":
            raise SystemExit("model.type is not BPE")
        self.vocab = model["vocab"]
        self.ranks = {}
        for r, m in enumerate(model["merges"]):
            pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            self.ranks.setdefault(pair, r)
        pre = spec.get("pre_tokenizer") or {}
        self.add_prefix_space = bool(pre.get("add_prefix_space", False))
        self.use_regex = pre.get("use_regex", True)
        self.added = {a["content"]: a["id"] for a in spec.get("added_tokens", [])}
        self.alphabet = byte_alphabet()
        self.ignore_merges = bool(model.get("ignore_merges", False))

    def bpe(self, word):
        if self.ignore_merges and word in self.vocab:
            return [word]
        parts = list(word)
        while len(parts) > 1:
            best = None
            for k in range(len(parts) - 1):
                r = self.ranks.get((parts[k], parts[k + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, parts[k], parts[k + 1])
            if best is None:
                break
            _, a, b = best
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and parts[k] == a and parts[k + 1] == b:
                    merged.append(a + b)
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return parts

    def split_added(self, text):
        """Pieces of text: (is_added, string), added tokens leftmost-longest."""
        out, start, i = [], 0, 0
        contents = sorted(self.added, key=len, reverse=True)
        while i < len(text):
            hit = next((c for c in contents if text.startswith(c, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                out.append((False, text[start:i]))
            out.append((True, hit))
            i += len(hit)
            start = i
        if start < len(text):
            out.append((False, text[start:]))
        return out

    def encode(self, text):
        ids = []
        for is_added, piece in self.split_added(text):
            if is_added:
                ids.append(self.added[piece])
                continue
            if self.add_prefix_space and not piece.startswith(" "):
                piece = " " + piece
            words = pretokenize(piece) if self.use_regex else [piece]
            for w in words:
                mapped = "".join(self.alphabet[b] for b in w.encode("utf-8"))
                ids.extend(self.vocab[t] for t in self.bpe(mapped))
        return ids


def main(argv):
    args = [a for a in argv[1:] if a != "--own"]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    tok_path, texts_path = args
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    impl = None
    if "--own" not in argv:
        try:
            import tokenizers  # noqa: F401

            tk = tokenizers.Tokenizer.from_file(tok_path)
            ids = [tk.encode(t, add_special_tokens=False).ids for t in texts]
            impl = "huggingface tokenizers %s" % tokenizers.__version__
        except ImportError:
            pass
    if impl is None:
        with open(tok_path, encoding="utf-8") as f:
            spec = json.load(f)
        own = OwnBPE(spec)
        ids = [own.encode(t) for t in texts]
        impl = "scripts/bpe_reference.py own implementation (python %s, unicodedata %s)" % (
            sys.version.split()[0], unicodedata.unidata_version)
    json.dump({"implementation": impl, "ids": ids}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
