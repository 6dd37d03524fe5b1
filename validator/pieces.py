"""Exact, fast ids for byte-level BPE tokenizers: one pre-token at a time, each pre-token's ids remembered.

A byte-level BPE tokenizer without a normalizer (GPT-2, Llama 3, Qwen2, Qwen3.5 …) encodes a text in steps whose
results depend only on their own input:

1. the added tokens (``<|eot_id|>`` …) are cut out of the text first, leftmost and longest;
2. each piece between them is split into pre-tokens by one regular expression (``Split(..., Isolated)`` followed by
   ``ByteLevel(use_regex=False)``, or GPT-2's ``ByteLevel(use_regex=True)``);
3. the BPE model turns each pre-token's bytes (as byte-level characters) into ids on its own.

So a pre-token's ids never depend on its neighbours, and a table pre-token -> ids, filled on a miss by the
tokenizer's own model (``model.tokenize``), gives exactly the tokenizer's ids. The Rust tokenizer spends most of its
time in step 2 (its regular expression engine) and in building ``Encoding`` objects; here step 2 runs on Python's
``re``: for ASCII text the pre-tokenizer's expression needs no Unicode tables (``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}``
``[0-9]``, ``\\p{M}`` nothing, ``\\s`` the six ASCII white-space characters in both engines), so it is rewritten once
and compiled with ``re.ASCII``. A piece with any non-ASCII character is encoded by the tokenizer itself (a piece
between added tokens encodes alone exactly as inside its text: step 1 found no added token in it).

``PieceEncoder.of(tokenizer)`` returns None for every other kind of tokenizer (SentencePiece-style, a normalizer,
added tokens that strip whitespace or are normalised, BPE dropout, a prefix space, an expression it cannot rewrite)
and for any tokenizer on which the rewritten split differs from the real one on a probe set; ``tests/test_pieces.py``
proves equality on every byte-level vocabulary with hypothesis-generated texts. ``Tokenizer.encode_batch_spans`` (the
gate's encoding) uses it; everything else still calls the tokenizer.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["PieceEncoder", "ascii_pattern"]

#: GPT-2's pre-tokenizer expression (``ByteLevel(use_regex=True)``)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: Unicode classes -> their ASCII members (what they match in ASCII text); "" for classes with no ASCII member
_ASCII_CLASS = {"L": "A-Za-z", "Lu": "A-Z", "Ll": "a-z", "Lt": "", "Lm": "", "Lo": "", "M": "", "Mn": "", "Mc": "",
                "Me": "", "N": "0-9", "Nd": "0-9", "Nl": "", "No": ""}
_PROP = re.compile(r"\\[pP]\{([A-Za-z]+)\}")

#: the table is cleared when it grows past this many pre-tokens (a worker's memory stays bounded)
MAX_PIECES = 1 << 18

#: texts the rewritten split must encode exactly as the tokenizer before it is used (plus the added tokens)
_PROBES = ["", "a", "Hello world", "  leading and trailing  ", "tabs\tand\nnewlines\n\n\n", "\r\n\r\n", "\r\r\n\n\r",
           "I'm sure you'll say it's what we'd've done, DON'T SHOUT, 'S 'T 'Re 'VE 'M 'LL 'D", "'''s''", "x's", "'",
           "1234567890 3.14159 12 123 1234 +1-800-555", "a1b22c333d4444", "snake_case and camelCase and __dunder__",
           "\x0b\x0c\x1c\x1d\x1e\x1f\x00\x01\x7f mixed \x0bcontrols\x0c", "  \n \n  x", "x  ", " \t \n", "a" * 300,
           "if (x) {\n    return y;\n}\n\n\tz = [1, 2, 3]  # end", "<not special> [INST] </s> <s> <|x|>",
           "!!!???... ;;; -- ---", " !x !!x", "a\n\n\nb\n \nc \n\n d", "      ", "\t\t\t", "end.\n", "\n"]


#: group openers whose meaning Python's ``re`` shares with Oniguruma (Ruby syntax); any other ``(?`` is refused
#: (Ruby's ``(?m)`` is Python's ``(?s)``, named groups differ, ...)
_GROUPS = ("(?:", "(?i:", "(?=", "(?!", "(?<=", "(?<!")
#: escapes that mean something else (or nothing) in Python: Ruby's \Z/\z/\G/\h/\R/\X/\K, back references
_REFUSED_ESCAPES = set("ZzGhHRXKkgQE123456789")


def ascii_pattern(pattern: str) -> re.Pattern | None:
    """The pre-tokenizer's expression as a Python ``re`` expression that splits any ASCII text exactly as the original
    (Oniguruma, Ruby syntax, Unicode classes) does; None when it uses anything this cannot rewrite exactly: a class
    other than the Unicode classes above, a character class left with no ASCII member, line anchors (``^``/``$``
    match at every line in Ruby syntax, at the text's ends in Python), an inline flag or escape the engines read
    differently, a nested class."""
    out = []
    in_class = False
    members_here = 0          # what the current class holds so far (0: nothing yet)
    i = 0
    while i < len(pattern):
        c = pattern[i]
        m = _PROP.match(pattern, i)
        if m:
            if m.group(0)[1] == "P" or m.group(1) not in _ASCII_CLASS:
                return None
            members = _ASCII_CLASS[m.group(1)]
            if in_class:
                out.append(members)
                members_here += bool(members)
            elif members:
                out.append(f"[{members}]")
            else:
                return None
            i = m.end()
            continue
        if c == "\\":
            if pattern[i + 1:i + 2] in _REFUSED_ESCAPES or i + 1 >= len(pattern):
                return None
            out.append(pattern[i:i + 2])
            members_here += in_class
            i += 2
            continue
        if in_class:
            if c == "]":
                if not members_here:
                    return None   # "[]" (or "[^]") would be read as the start of a class holding "]"
                in_class = False
            elif c == "[":
                return None       # a nested class or set operation: not rewritten
            elif c == "&" and pattern.startswith("&&", i):
                return None       # Ruby's class intersection
            else:
                members_here += 1
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            members_here = 0
            out.append(c)
            if pattern.startswith("^", i + 1):
                out.append("^")
                i += 1
            if pattern.startswith("]", i + 1):   # a literal ] first in a class
                out.append("\\]")
                members_here = 1
                i += 1
        elif c in "^$":
            return None
        elif c == "(" and pattern.startswith("(?", i):
            opener = next((g for g in _GROUPS if pattern.startswith(g, i)), None)
            if opener is None:
                return None
            out.append(opener)
            i += len(opener)
            continue
        else:
            out.append(c)
        i += 1
    if in_class:
        return None
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:
        return None


def _state(component: Any) -> Any:
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return "unknown"


def _split_pattern(pre: Any) -> str | None:
    """The expression of a byte-level pre-tokenizer whose split is one regular expression, else None."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex") and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence" or len(pre.get("pretokenizers") or []) != 2:
        return None
    split, byte_level = pre["pretokenizers"]
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert") \
            or "Regex" not in (split.get("pattern") or {}):
        return None
    if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
        return None
    return split["pattern"]["Regex"]


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map, for the ASCII bytes (what ``ByteLevel`` turns a pre-token into)."""
    from tmplcheck.validator.tokenizer import byte_decoder

    return {b: ch for ch, b in byte_decoder().items() if b < 128}


class PieceEncoder:
    """The ids of texts for one byte-level BPE tokenizer, equal to ``tokenizer.encode(text).ids`` (see module doc).

    ``front``/``back``: what the post-processor adds around a text with ``add_special_tokens=True``."""

    def __init__(self, tk: Any, split: re.Pattern, front: Sequence[int] = (), back: Sequence[int] = ()):
        self._tk = tk
        self._model = tk.model
        self._findall = split.findall
        added = tk.get_added_tokens_decoder()
        self._added_ids = {a.content: i for i, a in added.items()}
        words = sorted(filter(None, self._added_ids), key=len, reverse=True)   # leftmost first, then the longest there
        self._split_added = re.compile("(" + "|".join(map(re.escape, words)) + ")").split if words else None
        self._table = _Table(self._model, str.maketrans(_byte_chars()))
        self.front, self.back = list(front), list(back)
        self.pieces_fast = 0      # pieces split here (ASCII)
        self.pieces_slow = 0      # pieces the tokenizer encoded (non-ASCII)

    @classmethod
    def of(cls, tk: Any) -> "PieceEncoder | None":
        """The encoder for this Rust tokenizer when its ids can be made piece by piece and the rewritten split
        encodes every probe exactly as the tokenizer does; else None."""
        from tokenizers import models

        model = tk.model
        if tk.normalizer is not None or not isinstance(model, models.BPE) or model.dropout \
                or getattr(tk, "encode_special_tokens", False):
            return None
        added = tk.get_added_tokens_decoder()
        if any(a.lstrip or a.rstrip or a.single_word or a.normalized for a in added.values()):
            return None
        post = _state(tk.post_processor)
        if post == "unknown":
            return None
        pattern = _split_pattern(_state(tk.pre_tokenizer))
        split = ascii_pattern(pattern) if pattern else None
        if split is None:
            return None
        with_sp = tk.encode("a", add_special_tokens=True).ids
        without = tk.encode("a", add_special_tokens=False).ids
        at = next((k for k in range(len(with_sp) - len(without) + 1) if with_sp[k:k + len(without)] == without), None)
        if at is None:
            return None
        enc = cls(tk, split, with_sp[:at], with_sp[at + len(without):])   # what the post-processor adds
        contents = [a.content for a in added.values()][:64]
        probes = _PROBES + contents + [f"{a}{p}{b}" for a, b in zip(contents, contents[1:] + contents[:1])
                                        for p in ("\n\nx", "", " y ")]
        for add in (False, True):
            got = enc.encode(probes, add_special_tokens=add)
            want = [e.ids for e in tk.encode_batch_fast(probes, add_special_tokens=add)]
            if got != want:
                return None
        enc.pieces_fast = enc.pieces_slow = 0
        return enc

    def encode(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """The ids of each text, as ``tokenizer.encode_batch_fast(texts, add_special_tokens=...)`` gives them."""
        split, added_ids = self._split_added, self._added_ids
        findall, ids_of = self._findall, self._table.__getitem__
        front = self.front if add_special_tokens else []
        back = self.back if add_special_tokens else []
        chain = itertools.chain.from_iterable
        out: list[list[int]] = []
        slow: list[str] = []                      # non-ASCII pieces, encoded by the tokenizer in one batch
        holes: list[tuple[int, int]] = []         # where their ids go: (the text, the place in its ids)
        n_fast = 0
        for k, text in enumerate(texts):
            ids: list[int] = list(front)
            # split() with the added tokens in a group: [piece, added token, piece, ..., piece]
            parts = split(text) if split is not None else [text]
            for j, part in enumerate(parts):
                if j & 1:
                    ids.append(added_ids[part])
                elif part:
                    if part.isascii():
                        ids.extend(chain(map(ids_of, findall(part))))
                        n_fast += 1
                    else:
                        holes.append((k, len(ids)))
                        slow.append(part)
            ids.extend(back)
            out.append(ids)
        if slow:
            encoded = self._tk.encode_batch_fast(slow, add_special_tokens=False)
            for (k, at), e in reversed(list(zip(holes, encoded))):   # from the end: earlier places stay valid
                out[k][at:at] = e.ids
        self.pieces_fast += n_fast
        self.pieces_slow += len(slow)
        return out


class _Table(dict):
    """Pre-token -> ids; a missing pre-token is encoded by the BPE model (its byte-level characters) and kept."""

    def __init__(self, model: Any, to_bytes: dict):
        super().__init__()
        self._model, self._to_bytes = model, to_bytes

    def __missing__(self, piece: str) -> tuple[int, ...]:
        if len(self) >= MAX_PIECES:
            self.clear()
        ids = self[piece] = tuple(t.id for t in self._model.tokenize(piece.translate(self._to_bytes)))
        return ids
