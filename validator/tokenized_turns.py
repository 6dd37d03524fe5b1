"""The turns of a tokenized row, recovered from its ids and the template's structure (no decoding to text).

Every id stands for fixed bytes (byte-level BPE: its vocabulary entry through GPT-2's byte alphabet; SentencePiece:
``▁`` as a space, ``<0xNN>`` as a byte; an added token: its content), so a row is one byte string with each token's
byte span. The template's role headers and generation prompt (``Template.meta``, inferred by rendering needles for a
template loaded from a file) and its end-of-turn strings (``tokens.end_of_turn_strings``) are found in it; each
header starts a turn, which ends at its end-of-turn. Used by ``validator/tokenized_audit.py``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tmplcheck.validator.tokenizer import byte_decoder


# --------------------------------------------------------------------------------------------------------------
# the template's structure, as bytes
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Structure:
    """What the audit needs of a template/tokenizer pair."""

    headers: dict[str, bytes]            # role -> header bytes (assistant: the generation prompt)
    role_pattern: re.Pattern | None      # any role's header (the user header with the role name as a group)
    end_of_turn: tuple[bytes, ...]
    eot_ids: frozenset[int]
    stop_ids: frozenset[int]
    bos_id: int | None
    pad_id: int | None
    vocab_size: int
    token_bytes: "TokenBytes"
    header_patterns: dict[str, re.Pattern] = field(default_factory=dict)   # role -> header, trailing space optional
    not_headers: frozenset[bytes] = frozenset()   # end-of-turn, stop and BOS/EOS/pad strings: never a role header


class TokenBytes:
    """The bytes each id stands for, made on first use per id."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        tk = tokenizer.backend
        self._added = {i: a.content.encode("utf-8") for i, a in tk.get_added_tokens_decoder().items()}
        from tokenizers import decoders

        self._bytelevel = isinstance(tk.decoder, decoders.ByteLevel)
        if self._bytelevel:
            self._inv = byte_decoder()
        self._cache: dict[int, bytes] = {}

    def __call__(self, i: int) -> bytes:
        b = self._cache.get(i)
        if b is not None:
            return b
        if i in self._added:
            b = self._added[i]
        else:
            s = self.tok.id_to_token(i)
            if s is None:
                b = b""
            elif self._bytelevel and all(c in self._inv for c in s):
                b = bytes(self._inv[c] for c in s)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s):
                b = bytes([int(s[3:5], 16)])
            else:
                b = s.replace("\u2581", " ").encode("utf-8")
        self._cache[i] = b
        return b


def _tail(h: bytes) -> bytes:
    """A header as a regex whose trailing whitespace is optional: special tokens that strip the whitespace after
    them (Phi-3's ``<|assistant|>``, ``rstrip=True``) leave no trace of it in the ids."""
    core = h.rstrip()
    ws = h[len(core):]
    return re.escape(core) + (b"(?:" + re.escape(ws) + b")?" if ws else b"")


def build_structure(template, tokenizer, *, pad_id: int | None = None) -> Structure:
    """The audit's view of the pair. Raises ValueError when the template's assistant header cannot be known."""
    from tmplcheck.validator.tokens import end_of_turn_strings

    meta = template.meta
    headers = {r: h for r, h in (getattr(meta, "role_headers", None) or {}).items() if h}
    gen = getattr(meta, "generation_prompt", "") or headers.get("assistant", "")
    if not gen or not gen.strip() or not headers:
        from tmplcheck.validator.checks.template import infer_structure

        st = infer_structure(template)
        if not st.ok:
            raise ValueError(f"cannot tell the turns of template {meta.name!r} apart: {st.reason}")
        headers = {**st.role_headers, **headers}
        gen = gen if gen and gen.strip() else st.generation_prompt or st.role_headers.get("assistant", "")
    if not gen.strip():
        raise ValueError(f"template {meta.name!r} has no assistant header to locate answers by")
    headers["assistant"] = gen
    hb = {r: h.encode("utf-8") for r, h in headers.items()}
    pattern = None
    user = headers.get("user", "")
    if "user" in user:   # the header with any role name in it: tool / ipython / developer turns are named too
        a, _, b = user.partition("user")
        pattern = re.compile(re.escape(a.encode()) + rb"([A-Za-z_][\w-]{0,31})" + _tail(b.encode()))
    eots = tuple(e for e in end_of_turn_strings(template, tokenizer) if e)
    eot_ids = frozenset(i for i in (tokenizer.single_id(e) for e in eots) if i is not None)
    return Structure(headers=hb, role_pattern=pattern,
                     header_patterns={r: re.compile(_tail(h)) for r, h in hb.items()},
                     not_headers=frozenset(t.encode() for t in (*eots, tokenizer.bos_token, tokenizer.eos_token,
                                                                tokenizer.pad_token,
                                                                *(tokenizer.id_to_token(i) for i in tokenizer.stop_ids))
                                           if t), end_of_turn=tuple(e.encode() for e in eots),
                     eot_ids=eot_ids, stop_ids=frozenset(tokenizer.stop_ids) | eot_ids,
                     bos_id=tokenizer.bos_id, pad_id=pad_id if pad_id is not None else tokenizer.pad_id,
                     vocab_size=tokenizer.vocab_size, token_bytes=TokenBytes(tokenizer))


@dataclass
class Turn:
    role: str
    conv: int                     # which conversation of a packed row
    start: int                    # token index of the header's first token
    content: int                  # first token after the header
    end: int                      # first token of the end-of-turn (== eot_end when there is none)
    eot_end: int                  # one past the end-of-turn's last token
    has_eot: bool
    straddle: bool = False        # the content's first token also holds the header's last bytes
    trained: bool = False         # expected to be trained (assistant turn chosen by train_on)


def recover_turns(ids: Sequence[int], pads: Sequence[bool], st: Structure,
                  position_ids: Sequence[int] | None = None) -> tuple[list[Turn], list[int]]:
    """The turns of a row (several conversations when packed) and the token index where each conversation starts:
    the first real token, each BOS after a real token that is no BOS, and each restart of ``position_ids`` (how a
    padding-free collator packs templates without BOS, ChatML)."""
    tb = st.token_bytes
    starts_b: list[int] = []    # byte start of each token (pads contribute nothing)
    parts: list[bytes] = []
    pos = 0
    for t, pad in zip(ids, pads):
        starts_b.append(pos)
        b = b"" if pad else tb(t)
        parts.append(b)
        pos += len(b)
    buf = b"".join(parts)
    n = len(ids)

    def tok_at(bpos: int) -> int:
        """The token whose bytes contain byte ``bpos`` (n past the end)."""
        if bpos >= pos:
            return n
        k = bisect.bisect_right(starts_b, bpos) - 1
        while k + 1 < n and starts_b[k + 1] == bpos and not parts[k]:
            k += 1
        return max(k, 0)

    def tok_end(bpos: int) -> int:
        """One past the token whose bytes end at or contain byte ``bpos - 1``."""
        if bpos <= 0:
            return 0
        return tok_at(bpos - 1) + 1

    heads: list[tuple[int, int, str]] = []   # (byte start, byte end, role)
    taken: set[int] = set()
    for role, h in sorted(st.headers.items(), key=lambda kv: -len(kv[1])):
        pat = st.header_patterns.get(role) or re.compile(re.escape(h))
        for m in pat.finditer(buf):
            if m.start() not in taken:
                heads.append((m.start(), m.end(), role))
                taken.add(m.start())
    if st.role_pattern is not None:
        for m in st.role_pattern.finditer(buf):
            if m.group(0).rstrip() in st.not_headers:   # <|end|>, <|endoftext|>: Phi-3 writes them like headers
                continue
            if m.start() not in taken:
                heads.append((m.start(), m.end(), m.group(1).decode("utf-8", "replace")))
                taken.add(m.start())
    heads.sort()
    # drop a header found inside another (a generation prompt that is a prefix of a longer header)
    kept: list[tuple[int, int, str]] = []
    for h in heads:
        if kept and h[0] < kept[-1][1]:
            continue
        kept.append(h)
    real = [k for k in range(n) if not pads[k]]
    conv_starts = [real[0] if real else 0]
    if st.bos_id is not None:
        for a, b in zip(real, real[1:]):    # a BOS after a real token that is no BOS opens another conversation
            if ids[b] == st.bos_id and ids[a] != st.bos_id:
                conv_starts.append(b)
    if position_ids is not None:
        restarts = [b for a, b in zip(real, real[1:]) if position_ids[b] == 0 and position_ids[a] != 0]
        conv_starts = sorted(set(conv_starts) | set(restarts))
    turns: list[Turn] = []
    for j, (hs, he, role) in enumerate(kept):
        limit = kept[j + 1][0] if j + 1 < len(kept) else pos
        start_tok = tok_at(hs)
        conv = bisect.bisect_right(conv_starts, start_tok) - 1
        next_conv_b = starts_b[conv_starts[conv + 1]] if conv + 1 < len(conv_starts) else pos
        limit = min(limit, next_conv_b)
        best = None
        for e in st.end_of_turn:
            p = buf.find(e, he, limit)
            if p >= 0 and (best is None or p < best[0]):
                best = (p, p + len(e))
        content_tok = tok_at(he)
        straddle = content_tok < n and starts_b[content_tok] < he
        if best is None:
            end_tok = tok_end(limit) if limit > he else content_tok
            turns.append(Turn(role, conv, start_tok, content_tok, end_tok, end_tok, False, straddle))
        else:
            end_tok = max(tok_at(best[0]), content_tok)
            turns.append(Turn(role, conv, start_tok, content_tok, end_tok, max(tok_end(best[1]), end_tok), True,
                              straddle))
    return turns, conv_starts
