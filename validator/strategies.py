"""Hypothesis strategies for conversations: the one module both ``tmplcheck probe`` and the test suite draw from.

Conversations come in valid role orders (optional system, then user/assistant pairs, ending with an assistant) and
invalid ones (anything goes: consecutive roles, system in the middle, tool turns, trailing user); contents mix plain
words, unicode (CJK, emoji, combining marks, RTL), whitespace at the edges, newlines, empty strings, very long
runs, control-token strings of the template under test and Jinja/template delimiters.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

#: Text a user might paste that looks like template syntax.
DELIMITERS = ("{{", "}}", "{%", "%}", "{#", "#}", "<s>", "</s>", "[INST]", "[/INST]", "### Response:",
              "<|im_start|>", "<|eot_id|>", "<start_of_turn>", "\\n", "user", "assistant", "system")
WORDS = ("hello", "world", "the", "answer", "is", "42", "Python", "def f(x):", "return x", "naïve", "café",
         "日本語", "中文", "한국어", "Привет", "مرحبا", "🙂", "👩‍💻", "e\u0301", "\t", "   ", "\n", "\n\n", "```",
         "**bold**", "- item", "1.", "?", "!", "...", "'", '"', "\\", "<", ">", "|")


def _plain_chars() -> st.SearchStrategy[str]:
    # any unicode except surrogates and C0/C1 controls other than tab/newline (D026/D027 cover those)
    return st.characters(blacklist_categories=("Cs",), blacklist_characters=(
        [chr(c) for c in range(0x20) if c not in (9, 10)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]))


def words_text(min_words: int = 1, max_words: int = 12) -> st.SearchStrategy[str]:
    """Readable content: a few words (from a list that covers scripts, emoji and markdown) joined by spaces."""
    return st.lists(st.sampled_from(WORDS), min_size=min_words, max_size=max_words).map(" ".join)


def content(specials: Sequence[str] = (), *, clean: bool = False, max_size: int = 60,
            long: bool = True, edges: bool = False) -> st.SearchStrategy[str]:
    """Message content.

    ``clean=True`` gives content a well-behaved dataset holds (non-empty, no whitespace at the edges, no control
    strings): what the properties that must hold for *good data* are tested on. Otherwise anything goes, including
    ``specials`` (the template's control strings) and template delimiters.
    """
    base = st.one_of(words_text(), st.text(_plain_chars(), min_size=1, max_size=max_size))
    if clean or edges:
        good = base.map(str.strip).filter(bool).filter(lambda s: not any(x in s for x in specials if x))
        if edges:  # clean text, sometimes with whitespace at its edges (a template must keep or trim it knowingly)
            return st.one_of(good, st.tuples(st.sampled_from([" ", "\n", "  ", ""]), good,
                                             st.sampled_from([" ", "\n", "\n\n", ""])).map("".join))
        return good
    options = [base, st.just(""), base.map(lambda s: f"  {s}\n"), base.map(lambda s: f"\n{s}"),
               base.map(lambda s: f"{s}\n\n"),
               st.tuples(base, st.sampled_from(DELIMITERS), base).map("".join)]
    if specials:
        options.append(st.tuples(base, st.sampled_from(list(specials)), base).map(lambda t: f"{t[0]} {t[1]} {t[2]}"))
    if long:
        options.append(st.tuples(st.sampled_from(WORDS), st.integers(200, 2000)).map(lambda t: (t[0] + " ") * t[1]))
    return st.one_of(*options)


@st.composite
def valid_conversations(draw, specials: Sequence[str] = (), *, system: bool | None = None, clean: bool = True,
                        max_pairs: int = 3, edges: bool = False) -> list[dict]:
    """system? (user assistant)+ — the order every chat template accepts."""
    msgs: list[dict] = []
    c = content(specials, clean=clean, edges=edges)
    if system is None:
        system = draw(st.booleans())
    if system:
        msgs.append({"role": "system", "content": draw(c)})
    for _ in range(draw(st.integers(1, max_pairs))):
        msgs.append({"role": "user", "content": draw(c)})
        msgs.append({"role": "assistant", "content": draw(c)})
    return msgs


@st.composite
def any_conversations(draw, specials: Sequence[str] = (), *, max_size: int = 7) -> list[dict]:
    """Roles in any order (consecutive, system later, trailing user, tool turns) with any content."""
    role = st.sampled_from(["system", "user", "assistant", "tool"])
    n = draw(st.integers(0, max_size))
    return [{"role": draw(role), "content": draw(content(specials))} for _ in range(n)]


def conversations(specials: Sequence[str] = (), *, valid_only: bool = False) -> st.SearchStrategy[list[dict]]:
    """Mostly valid conversations (with any content), sometimes invalid orders."""
    valid = valid_conversations(specials, clean=False)
    if valid_only:
        return valid
    return st.one_of(valid, valid, any_conversations(specials))


def dataset_rows(specials: Sequence[str] = (), *, fmt: str = "sharegpt") -> st.SearchStrategy[dict]:
    """One JSONL row (ShareGPT or OpenAI shape) holding a valid conversation."""
    conv = valid_conversations(specials, clean=False)
    if fmt == "openai":
        return conv.map(lambda ms: {"messages": ms})
    alias = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}
    return conv.map(lambda ms: {"conversations": [{"from": alias[m["role"]], "value": m["content"]} for m in ms]})


# ------------------------------------------------------------------------------------------------ hostile lines
def _good_row(i: int) -> bytes:
    import json

    return json.dumps({"conversations": [{"from": "human", "value": f"Question number {i}?"},
                                         {"from": "gpt", "value": f"Answer number {i}."}]}).encode()


def hostile_lines(max_big: int = 10_000_000) -> st.SearchStrategy[bytes]:
    """One JSONL line that no reader should die on: deep nesting, huge numbers, NaN/Infinity, lone surrogates,
    duplicate keys, NUL (escaped and raw), invalid UTF-8, and lines up to ``max_big`` bytes (the gate must report
    each as located D findings and go on). The line has no newline of its own."""
    import json

    def conv(value: str) -> bytes:
        return json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                             {"from": "gpt", "value": value}]}).encode()

    deep = st.integers(65, 200_000).flatmap(lambda n: st.sampled_from([
        b"[" * n, b"[" * n + b"]" * n, b'{"conversations": ' + b"[" * n + b"]" * n + b"}",
        b'{"a":' * n + b"1" + b"}" * n]))
    digits = st.integers(4_001, 50_000).map(
        lambda n: b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x", "w": '
                  + b"9" * n + b"}]}")
    odd_numbers = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"]).map(
        lambda v: b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x", "w": '
                  + v + b"}]}")
    surrogate = st.sampled_from([b'"\\ud800"', b'"a\\udfffb"', b'"\\ud83d"']).map(
        lambda s: b'{"conversations": [{"from": "human", "value": ' + s + b'}, {"from": "gpt", "value": "x"}]}')
    dup = st.just(b'{"conversations": [{"from": "human", "value": "a", "value": "b"}, '
                  b'{"from": "gpt", "value": "x"}], "conversations": []}')
    nul = st.sampled_from([conv("a\x00b"), b'{"conversations": [{"from": "human", "value": "a\x00b"}]}',
                           b"\x00\x00\x00", b'{"conversations": \x00}'])
    bad_utf8 = st.sampled_from([b"\xff\xfe\xfd", conv("caf\u00e9").replace(b"\\u00e9", b"\xe9"),
                                b'{"conversations": [{"from": "human", "value": "\xc3"}]}'])
    big = st.integers(1_000_001, max_big).flatmap(lambda n: st.sampled_from([
        conv("x" * n), b'{"conversations": [' + b'{"from": "human", "value": "a"},' * (n // 34) + b"{}]}",
        b'"' + b"y" * n + b'"', b"[" + b"1," * (n // 2) + b"1]"]))
    garbage = st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b)
    return st.one_of(deep, digits, odd_numbers, surrogate, dup, nul, bad_utf8, big, garbage).map(
        lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))


def hostile_files(max_lines: int = 6, max_big: int = 10_000_000) -> st.SearchStrategy[list[tuple[bool, bytes]]]:
    """A file's lines as (is_good, bytes): good rows (each different) mixed with hostile lines."""
    good = st.integers(0, 10**9).map(lambda i: (True, _good_row(i)))
    bad = hostile_lines(max_big).map(lambda b: (False, b))
    return st.lists(st.one_of(good, bad), min_size=1, max_size=max_lines).filter(
        lambda ls: len({x for ok, x in ls if ok}) == sum(ok for ok, _ in ls))
