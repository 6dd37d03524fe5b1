"""``validator/pieces.py``: the pre-token-at-a-time encoder gives exactly the ids of the tokenizer it was made from
(``encode_batch_fast``), with and without the post-processor's tokens, one text or a batch, on generated texts
aimed at the pre-tokenizer's edges and on the real texts the repository holds (llama.cpp's tokenizer test inputs,
the golden renders, the scan corpus, the fixtures' conversations rendered with the llama-3 template). It is refused
for tokenizers it does not cover, and on tokenizers derived from the real ones (overlapping added tokens, other
split expressions) it is exact or refused. ``ascii_pattern`` rewrites the pre-tokenizer's expression faithfully, and
refuses what it cannot (a class left without ASCII members, Ruby's line anchors). ``TMPLCHECK_PIECES=0`` turns it off, and the gate's findings do not depend on it."""

from __future__ import annotations

import glob
import json
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex
from tokenizers import pre_tokenizers as P

from tmplcheck.validator import pieces
from tmplcheck.validator.pieces import GPT2_PATTERN, PieceEncoder, ascii_pattern

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"

ELIGIBLE = ["llama-3", "qwen2", "qwen3.5", "gpt-2"]
REFUSED = ["llama-2", "phi-3", "gemma-4"]

_ENCODERS: dict = {}


def encoder(get_tokenizer, name: str) -> PieceEncoder:
    """One encoder per tokenizer for the module (its table fills across examples, as in a gate run)."""
    if name not in _ENCODERS:
        enc = PieceEncoder.of(get_tokenizer(name).backend)
        assert enc is not None, name
        _ENCODERS[name] = enc
    return _ENCODERS[name]


def want(backend, texts, add: bool) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=add)]


def assert_exact(enc: PieceEncoder, backend, texts: list[str]) -> None:
    for add in (False, True):
        got, exp = enc.encode(texts, add_special_tokens=add), want(backend, texts, add)
        assert len(got) == len(exp)
        wrong = [(k, texts[k], g, w) for k, (g, w) in enumerate(zip(got, exp)) if g != w]
        assert wrong == [], (add, len(wrong), wrong[:1])


# --------------------------------------------------------------------------------------------------------------
# 1. which tokenizers get an encoder
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ELIGIBLE)
def test_byte_level_bpe_tokenizers_get_an_encoder(get_tokenizer, name):
    backend = get_tokenizer(name).backend
    enc = PieceEncoder.of(backend)
    assert enc is not None
    # what the post-processor adds, as the tokenizer adds it
    with_sp = backend.encode("x", add_special_tokens=True).ids
    without = backend.encode("x", add_special_tokens=False).ids
    assert enc.front + without + enc.back == with_sp
    assert enc.pieces_fast == enc.pieces_slow == 0          # the probes are not counted


def test_llama3_adds_its_bos_and_gpt2_nothing(get_tokenizer):
    l3 = PieceEncoder.of(get_tokenizer("llama-3").backend)
    assert (l3.front, l3.back) == ([get_tokenizer("llama-3").bos_id], [])
    g2 = PieceEncoder.of(get_tokenizer("gpt-2").backend)
    assert (g2.front, g2.back) == ([], [])


@pytest.mark.parametrize("name", REFUSED)
def test_sentencepiece_style_and_normalised_tokenizers_get_none(get_tokenizer, name):
    assert PieceEncoder.of(get_tokenizer(name).backend) is None


# --------------------------------------------------------------------------------------------------------------
# 2. generated texts at the pre-tokenizer's edges
# --------------------------------------------------------------------------------------------------------------

LETTERS = st.text(string.ascii_letters, min_size=1, max_size=8)
DIGITS = st.integers(1, 7).flatmap(lambda n: st.text(string.digits, min_size=n, max_size=n))
CONTRACTIONS = st.sampled_from(["'s", "'T", "'re", "'VE", "'m", "'ll", "'d", "'S", "'t", "'Re", "'vE", "'M", "'LL",
                                "'D", "'", "''", "'x", "'ss", "'lll"])
WHITESPACE = st.text(" \t\n\x0b\x0c\r", min_size=1, max_size=5)
CONTROLS = st.sampled_from(["\x00", "\x01", "\x07", "\x08", "\x1b", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f"])
PUNCT = st.text(string.punctuation, min_size=1, max_size=5)
SPACED = st.tuples(st.sampled_from([" ", "  ", "\t", " \t", "\n ", "\r "]),
                   st.one_of(PUNCT, LETTERS, DIGITS, CONTRACTIONS, st.sampled_from(["\n", "\r\n", "\n\n"]))
                   ).map("".join)
NON_ASCII = st.sampled_from([
    "é", "e\u0301", "\u0301", "中文", "日本語", "👨\u200d👩\u200d👧", "😀", "\u200d", "\u00a0", "\u2028", "\u2029", "\x85",
    "\u3000", "\u2009", "Привет", "мир", "٣", "١٢٣", "\u0660", "ß", "ſ", "\u212a", "ǅ", "ﬁ", "\U0001d400", "Ⅻ", "½",
    "\ufeff", "\ufffd", "\u00ad", "é's", "'ſ", "x\u0301y"])


def _added(backend) -> list[str]:
    return sorted(a.content for a in backend.get_added_tokens_decoder().values())


def texts_for(backend):
    added = _added(backend)
    words = st.sampled_from(added)
    # a start or an end of an added token ("<|eot_id", "<|", "|>", "eot_id|>"): not one, until a neighbour completes it
    partial = words.filter(lambda w: len(w) > 1).flatmap(
        lambda w: st.integers(1, len(w) - 1).flatmap(lambda k: st.sampled_from([w[:k], w[k:]])))
    piece = st.one_of(
        LETTERS, DIGITS, CONTRACTIONS, WHITESPACE, CONTROLS, PUNCT, SPACED, NON_ASCII, words, partial,
        st.sampled_from(["<|", "|>", "<|eot_id", "<|im_start", "<s>", "</s>", "[INST]"]),
        st.text(st.characters(max_codepoint=0x7f), max_size=6),
        st.text(max_size=4),
    )
    return st.lists(piece, max_size=14).map("".join)


_SETTINGS = settings(max_examples=300, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("name", ELIGIBLE)
def test_each_text_encodes_exactly(get_tokenizer, name):
    backend = get_tokenizer(name).backend
    enc = encoder(get_tokenizer, name)

    @_SETTINGS
    @given(texts_for(backend))
    def check(text):
        for add in (False, True):
            assert enc.encode([text], add_special_tokens=add) == want(backend, [text], add), add

    check()


@pytest.mark.parametrize("name", ELIGIBLE)
def test_a_batch_encodes_exactly_and_in_order(get_tokenizer, name):
    backend = get_tokenizer(name).backend
    enc = encoder(get_tokenizer, name)

    @_SETTINGS
    @given(st.lists(texts_for(backend), min_size=2, max_size=7))
    def check(texts):
        assert_exact(enc, backend, texts)

    check()


def test_the_generated_texts_reach_both_paths(get_tokenizer):
    """The strategies are not vacuous: ASCII pieces go through the rewritten split, others through the tokenizer,
    and added tokens are cut out."""
    backend = get_tokenizer("llama-3").backend
    enc = PieceEncoder.of(backend)
    texts = ["I'm here 12345<|eot_id|>", "caf\u00e9 \u4e2d\u6587<|start_header_id|>user", "<|eot_id", ""]
    assert_exact(enc, backend, texts)
    assert enc.pieces_fast > 0 and enc.pieces_slow > 0
    eot = backend.token_to_id("<|eot_id|>")
    assert eot in enc.encode(texts[:1])[0] and eot not in enc.encode(texts[3:])[0]


# --------------------------------------------------------------------------------------------------------------
# 3. real texts
# --------------------------------------------------------------------------------------------------------------

_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant", "tool": "tool"}


def _messages(row) -> list[dict] | None:
    if not isinstance(row, dict):
        return None
    conv = row.get("messages", row.get("conversations"))
    if not isinstance(conv, list):
        return None
    out = []
    for m in conv:
        if not isinstance(m, dict):
            return None
        role = _ROLE.get(m.get("role", m.get("from")))
        content = m.get("content", m.get("value"))
        if role is None or not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    return out or None


def _jsonl_rows(path: Path):
    for line in path.read_bytes().decode("utf-8", "replace").lstrip("\ufeff").splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


_REAL: list[str] = []


def real_texts() -> list[str]:
    """The upstream tokenizer test inputs of every vocabulary, the golden renders, the scan corpus's prompts and
    generations, and every conversation of the dataset fixtures and examples rendered with the llama-3 template."""
    if _REAL:
        return _REAL
    from tmplcheck import assets
    from tmplcheck.templates import load_template

    texts: list[str] = []
    models = assets.vocab_gguf("llama-bpe").parent
    for inp in sorted(models.glob("ggml-vocab-*.gguf.inp")):
        texts += [t for t, _ in assets.read_vocab_tests(str(inp)[:-len(".inp")])]
    for p in sorted((FIX / "golden").rglob("*.txt")):
        texts.append(p.read_text(encoding="utf-8"))
    for p in sorted((FIX / "scan_corpus").glob("*.jsonl")):
        for row in _jsonl_rows(p):
            if isinstance(row.get("output"), str):
                texts.append(row["output"])
            for m in row.get("prompt") or []:
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    texts.append(m["content"])
    tpl = load_template("llama-3")
    files = [FIX / "inputs" / "planted.jsonl", ROOT / "examples" / "tweets.jsonl"] + sorted(
        Path(p) for d in ("dataset", "tokens", "train", "generations", "audit", "templates")
        for p in glob.glob(str(FIX / d / "*.jsonl")))
    for p in files:
        for row in _jsonl_rows(p):
            msgs = _messages(row)
            if msgs is None:
                continue
            for gen in (False, True):
                try:
                    texts.append(tpl.render(msgs, add_generation_prompt=gen))
                except Exception:  # noqa: BLE001 - a fixture row the template rejects (on purpose) is no text
                    pass
    _REAL.extend(t for t in texts if not any(0xD800 <= ord(c) <= 0xDFFF for c in t))
    return _REAL


def test_the_real_texts_are_many_and_varied():
    texts = real_texts()
    assert len(texts) > 500
    assert sum(not t.isascii() for t in texts) > 50
    assert sum("<|eot_id|>" in t for t in texts) > 100 and sum("<|im_start|>" in t for t in texts) > 10


@pytest.mark.parametrize("name", ELIGIBLE)
def test_real_texts_encode_exactly(get_tokenizer, name):
    backend = get_tokenizer(name).backend
    enc = encoder(get_tokenizer, name)
    texts = real_texts()
    assert_exact(enc, backend, texts)                          # one batch
    for add in (False, True):                                  # and one at a time
        assert [enc.encode([t], add_special_tokens=add)[0] for t in texts] == want(backend, texts, add)


# --------------------------------------------------------------------------------------------------------------
# 4. ascii_pattern
# --------------------------------------------------------------------------------------------------------------

def test_ascii_pattern_rewrites_unicode_classes():
    assert ascii_pattern(r"\p{L}+").pattern == "[A-Za-z]+"
    assert ascii_pattern(r"\p{N}{1,3}").pattern == "[0-9]{1,3}"
    assert ascii_pattern(r"\p{Lu}\p{Ll}").pattern == "[A-Z][a-z]"
    assert ascii_pattern(r"[^\s\p{L}\p{N}]+").pattern == r"[^\sA-Za-z0-9]+"
    assert ascii_pattern(r"[\p{L}\p{M}]+").pattern == "[A-Za-z]+"     # \p{M} has no ASCII member
    assert ascii_pattern(r"\\p{L}").pattern == r"\\p{L}"               # an escaped backslash, then letters
    assert ascii_pattern(r"[]\p{N}]").pattern == r"[\]0-9]"            # a ] first in a class is literal
    assert ascii_pattern(r"\p{L}").flags & re.ASCII


@pytest.mark.parametrize("pattern", [r"\P{L}", r"[^\P{N}]", r"\p{Greek}", r"\p{Han}+", r"[a[b]]", r"[\p{L}[0-9]]",
                                     r"\p{M}", r"x\p{Mn}", r"\p{Lo}+", r"[\p{L}", r"(?<name"])
def test_ascii_pattern_refuses_what_it_cannot_rewrite(pattern):
    assert ascii_pattern(pattern) is None


def isolated(rx: re.Pattern, s: str) -> list[str]:
    """``Split(pattern, "isolated")`` done with Python's ``re``: the matches and the text between them."""
    out, pos = [], 0
    for m in rx.finditer(s):
        if m.start() > pos:
            out.append(s[pos:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(s):
        out.append(s[pos:])
    return out


def split_pieces(pattern: str, s: str) -> list[str]:
    return [p for p, _ in P.Split(Regex(pattern), "isolated").pre_tokenize_str(s)]


ASCII_TEXT = st.lists(st.one_of(
    st.text(st.characters(max_codepoint=0x7f), max_size=8), LETTERS, DIGITS, CONTRACTIONS, WHITESPACE, PUNCT,
    SPACED, CONTROLS), max_size=10).map("".join)


@pytest.mark.parametrize("name", ELIGIBLE)
def test_the_rewritten_expression_splits_ascii_as_the_pre_tokenizer(get_tokenizer, name):
    """The whole pre-tokenizer (Split + ByteLevel, or GPT-2's ByteLevel) on ASCII text gives the pieces that the
    rewritten expression finds (ByteLevel's characters mapped back to bytes), with no text between them."""
    from tmplcheck.validator.tokenizer import byte_decoder

    backend = get_tokenizer(name).backend
    state = json.loads(backend.pre_tokenizer.__getstate__())
    pattern = GPT2_PATTERN if state["type"] == "ByteLevel" else state["pretokenizers"][0]["pattern"]["Regex"]
    rx = ascii_pattern(pattern)
    assert rx is not None
    bd = byte_decoder()

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ASCII_TEXT)
    def check(s):
        real = ["".join(chr(bd[c]) for c in p) for p, _ in backend.pre_tokenizer.pre_tokenize_str(s)]
        assert rx.findall(s) == real
        assert isolated(rx, s) == real == split_pieces(pattern, s)

    check()


def test_gpt2_pattern_is_the_byte_level_pre_tokenizers():
    """GPT2_PATTERN as a Split gives exactly ``ByteLevel(use_regex=True)``'s pieces."""
    from tmplcheck.validator.tokenizer import byte_decoder

    bd = byte_decoder()
    bl = P.ByteLevel(add_prefix_space=False, use_regex=True)
    for s in ["I'm  here\n\n 123 4567 ..x", "'S 'll  \t\r\n x", "a\x0bb\x0c c\x1c d", "  ", "x  !!y"]:
        assert ["".join(chr(bd[c]) for c in p) for p, _ in bl.pre_tokenize_str(s)] == split_pieces(GPT2_PATTERN, s)


@pytest.mark.parametrize("pattern,text", [(r"[\p{M}]|[ab]", "a|b[]"), (r"[\p{Mn}\p{Lo}]|x]", "x]|")])
def test_a_class_left_without_ascii_members_is_refused_or_kept_empty(pattern, text):
    rx = ascii_pattern(pattern)
    assert rx is None or isolated(rx, text) == split_pieces(pattern, text)


@pytest.mark.parametrize("pattern,text", [(r"^ +|\S+|\s", "a\n  b"), (r"\p{L}+$|\p{L}|\s+", "ab\ncd")])
def test_line_anchors_split_as_oniguruma(pattern, text):
    rx = ascii_pattern(pattern)
    assert rx is None or isolated(rx, text) == split_pieces(pattern, text)


# --------------------------------------------------------------------------------------------------------------
# 5. the table's bound
# --------------------------------------------------------------------------------------------------------------

def test_a_small_table_stays_exact(get_tokenizer, monkeypatch):
    monkeypatch.setattr(pieces, "MAX_PIECES", 8)
    backend = get_tokenizer("llama-3").backend
    enc = PieceEncoder.of(backend)
    assert enc is not None
    texts = real_texts()
    assert len(enc._table) <= 8
    assert_exact(enc, backend, texts)
    assert 0 < len(enc._table) <= 8
    for add in (False, True):
        assert [enc.encode([t], add_special_tokens=add)[0] for t in texts[:300]] == want(backend, texts[:300], add)
    assert 0 < len(enc._table) <= 8


# --------------------------------------------------------------------------------------------------------------
# 6. the off switch, and the gate with and without the encoder
# --------------------------------------------------------------------------------------------------------------

def test_the_environment_turns_it_off(monkeypatch):
    from tmplcheck.validator.tokenizer import load_tokenizer

    monkeypatch.setenv("TMPLCHECK_PIECES", "0")
    off = load_tokenizer("llama-3")
    assert off.pieces() is None
    monkeypatch.setenv("TMPLCHECK_PIECES", "1")
    assert off.pieces() is None                      # read once per tokenizer
    on = load_tokenizer("llama-3")
    assert on is not off and on.pieces() is not None
    monkeypatch.delenv("TMPLCHECK_PIECES")
    assert load_tokenizer("llama-3").pieces() is not None   # on by default


def _gate(path: Path):
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages

    # a fresh tokenizer per run (build_stages loads it): the switch is read once per tokenizer
    stages = build_stages(StageConfig(template="llama-3", tokenizer="llama-3", max_length=64, extra={"jobs": 1}))
    res = run_gate(path, GateOptions(stages=stages, jobs=1))
    found = sorted((f.code, f.severity.value, f.line, f.pointer, f.message) for f in res.findings)
    return found, res.summary


@pytest.mark.parametrize("path", [FIX / "inputs" / "planted.jsonl", FIX / "dataset" / "all_codes.jsonl",
                                  FIX / "dataset" / "replacement_character.jsonl"], ids=lambda p: p.name)
def test_the_gate_finds_the_same_with_and_without_it(path, monkeypatch):
    made: list = []
    of = PieceEncoder.of.__func__

    def recording_of(cls, tk):
        enc = of(cls, tk)
        made.append(enc)
        return enc

    monkeypatch.setattr(PieceEncoder, "of", classmethod(recording_of))
    monkeypatch.setenv("TMPLCHECK_PIECES", "1")
    found_on, summary_on = _gate(path)
    assert made and made[-1] is not None
    assert sum(e.pieces_fast + e.pieces_slow for e in made if e is not None) > 0   # the gate used it
    made.clear()
    monkeypatch.setenv("TMPLCHECK_PIECES", "0")
    found_off, summary_off = _gate(path)
    assert made == []
    assert summary_on["tokens"]["rows_encoded"] > 0
    assert found_on == found_off
    assert summary_on == summary_off


# --------------------------------------------------------------------------------------------------------------
# derived tokenizers: added tokens that overlap, added tokens it does not cover, other expressions
# --------------------------------------------------------------------------------------------------------------

def _copy(backend):
    from tokenizers import Tokenizer as RustTokenizer

    return RustTokenizer.from_str(backend.to_str())


#: added tokens where one starts another, ends another or overlaps it: the leftmost, then the longest, must win
OVERLAPPING = ["<|ab", "<|abc|>", "<|abc", "bc|>", "xyz", "yz", "xy", "hello", " world", "\n\n<|x"]


def overlapping(get_tokenizer, name):
    from tokenizers import AddedToken

    tk = _copy(get_tokenizer(name).backend)
    tk.add_special_tokens([AddedToken(w, normalized=False) for w in OVERLAPPING[:4]])
    tk.add_tokens([AddedToken(w, normalized=False) for w in OVERLAPPING[4:]])
    return tk


@pytest.mark.parametrize("name", ["llama-3", "gpt-2"])
def test_overlapping_added_tokens_are_cut_as_the_tokenizer_cuts_them(get_tokenizer, name):
    tk = overlapping(get_tokenizer, name)
    enc = PieceEncoder.of(tk)
    assert enc is not None
    # the longest at the leftmost place, not the first listed nor the shortest
    assert enc.encode(["<|abc|>"]) == [[tk.token_to_id("<|abc|>")]]
    assert enc.encode(["xyz"]) == [[tk.token_to_id("xyz")]]
    assert_exact(enc, tk, ["<|abc|>", "<|abcd", "a<|ab|>", "xyzyz", "wxyz", "hello world", "\n\n<|xyz", "<|abc|>|>"])
    piece = st.one_of(st.sampled_from(OVERLAPPING + ["<|", "|>", "a", "b", "c", "x", "y", "z", " ", "\n", "é"]),
                      st.text(st.characters(max_codepoint=0x7f), max_size=3))

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.lists(piece, max_size=10).map("".join), min_size=1, max_size=4))
    def check(texts):
        assert_exact(enc, tk, texts)

    check()


@pytest.mark.parametrize("change", ["lstrip", "rstrip", "single_word", "normalized"])
def test_added_tokens_that_change_their_neighbours_are_refused(get_tokenizer, change):
    from tokenizers import AddedToken

    tk = _copy(get_tokenizer("gpt-2").backend)
    assert PieceEncoder.of(tk) is not None
    tk.add_tokens([AddedToken("<mask>", **{"normalized": False, change: True})])
    assert PieceEncoder.of(tk) is None


def _with_expression(backend, pattern: str):
    """The tokenizer with its pre-tokenizer replaced by ``Split(pattern, Isolated)`` + ``ByteLevel(use_regex=False)``
    (Llama 3's and Qwen2's layout)."""
    from tokenizers import Tokenizer as RustTokenizer

    d = json.loads(backend.to_str())
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    return RustTokenizer.from_str(json.dumps(d))


_L3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
       r"|\s+(?!\S)|\s+")


@pytest.mark.parametrize("pattern,must_apply", [
    (_L3, True),                                                      # Llama 3's, on GPT-2's vocabulary
    (r"\p{N}{1,2}|" + _L3, True),                                     # a different digit run
    (r"\p{Lu}\p{Ll}+|" + _L3, True),                                  # case classes
    (r"\p{L}+$|" + _L3, False),                                       # a line anchor
    (r" +$|" + _L3, False),
    (r"^ +|" + _L3, False),
    (r"\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)", False),       # text between matches (a space before a word)
    (r"(\p{L}+)|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", False),  # a capturing group (findall gives the group)
    (r"[\p{M}]|" + _L3, False),                                       # a class with no ASCII member
], ids=["llama-3", "digits", "case", "letters-dollar", "dollar", "caret", "gap", "group", "empty-class"])
def test_an_encoder_is_exact_or_refused_for_other_expressions(get_tokenizer, pattern, must_apply):
    """Whatever expression a byte-level tokenizer splits with, ``of`` gives an exact encoder or None: the probes
    stand between a rewrite that differs and the ids."""
    tk = _with_expression(get_tokenizer("gpt-2").backend, pattern)
    enc = PieceEncoder.of(tk)
    if enc is None:
        assert not must_apply
        return

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(ASCII_TEXT, min_size=1, max_size=4))
    def check(texts):
        assert_exact(enc, tk, texts)

    check()


def test_empty_inputs(get_tokenizer):
    backend = get_tokenizer("llama-3").backend
    enc = encoder(get_tokenizer, "llama-3")
    assert enc.encode([]) == []
    assert enc.encode([""]) == [[]] == want(backend, [""], False)
    assert enc.encode(["", ""], add_special_tokens=True) == want(backend, ["", ""], True)
