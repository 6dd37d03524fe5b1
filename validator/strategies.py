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
