"""Artifact patterns, derived from template metadata (and the tokenizer, when one is given).

Nothing here is hand-written per model family: role words, control-token strings, rendered headers and their
stripped forms, the generation prompt and BOS all come from ``TemplateMeta`` (the template being scanned, plus
every template in the registry for the "foreign" patterns). A new template brings its own patterns. The only
hand-written lists are the markup that no built-in template writes but that models trained elsewhere leak:
reasoning tags, tool-call markers and a few headers of common formats outside the registry (``COMMON_*`` below).

Which strings count as control tokens (A003, A007):
- with ``output_ids`` and a tokenizer: the special ids of the vocabulary, nothing else (:attr:`special_ids`);
- from text alone: only strings that are control tokens of *this* template or special tokens of *this* tokenizer
  (:attr:`own_controls`). Another family's token strings are header fragments (A004) when they stand where a model
  would write them, never control tokens.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"^[A-Za-z][A-Za-z_]*$")
# a control token shaped like an XML/HTML tag (<s>, </s>, <bos>): common in real text, so it only counts where a
# model would write it (not in a tag pair, not named in a sentence)
_TAGLIKE = re.compile(r"^</?[A-Za-z][A-Za-z0-9]*>$")

# Reasoning markup of templates outside the registry (DeepSeek-R1/Qwen3 think tags, Magistral, GPT-OSS harmony).
COMMON_REASONING = ("<think>", "</think>", "<thinking>", "</thinking>", "[THINK]", "[/THINK]",
                    "<|channel|>", "<|message|>", "<|start|>assistant", "<|begin_of_thought|>", "<|end_of_thought|>")
# Harmony with special tokens skipped: "analysisWe need...assistantfinalThe answer"
HARMONY_SKIPPED = re.compile(r"\Aanalysis(?=[A-Z])|assistant(?:final|analysis|commentary)(?=\S)")
# Tool-call markers (Hermes/Qwen, Llama 3.1, Mistral, Phi-4, DeepSeek, Llama 3.1's end of a tool message).
COMMON_TOOL = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<|tool_call|>", "<|/tool_call|>",
               "<tool_response>", "</tool_response>", "[TOOL_RESULTS]", "<|tool_calls_begin|>",
               "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<|eom_id|>")
# Headers of common formats that no built-in renders: Vicuna v0, Alpaca's input section, Phi-4's separator, a
# control token whose name was lost.
COMMON_HEADERS = ("### Human:", "### Assistant:", "### Input:", "### System:", "<|im_sep|>", "<|>")

# Word-forming prefixes: a role word glued to one of these is an English word ("subsystem", "superuser",
# "remodel"), not a leaked header.
WORD_PREFIXES = frozenset("""
a anti astro auto bio co counter cyber de eco electro end endo exo file geo hyper in info inter intra macro mega
meta micro mini mis mono multi nano neuro non over para photo poly post power pre pro pseudo re self semi sensori
solar sub super tele trans ultra un under
""".split())


def known_templates() -> list[Any]:
    """Every template's metadata in the registry."""
    from tmplcheck.templates import registry

    return list(registry().values())


def _strip_all(text: str, tokens: Iterable[str]) -> str:
    for t in sorted(set(tokens), key=len, reverse=True):
        if t:
            text = text.replace(t, "")
    return text


def _inner_name(tok: str) -> str | None:
    """``<|start_header_id|>`` -> ``start_header_id``: the name a control token leaves when its brackets are lost."""
    inner = tok.strip("<>|[]/ ")
    if "_" in inner and len(inner) >= 6 and re.fullmatch(r"[a-z0-9_]+", inner):
        return inner
    return None


def _alternation(strings: Iterable[str]) -> re.Pattern | None:
    uniq = sorted({s for s in strings if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, uniq))) if uniq else None


def taglike(tok: str) -> bool:
    return bool(_TAGLIKE.match(tok))


@dataclass(frozen=True)
class Header:
    template: str
    role: str
    rendered: str        # as the template writes it, edge whitespace removed
    stripped: str        # with every control token removed (what a serving stack that skips special tokens shows)
    tail: str = ""       # the whitespace the template writes after the header ("\n\n" for Llama 3)

    @property
    def plain(self) -> bool:
        """A header of plain text only (``USER:``, ``### Instruction:``)."""
        return self.rendered == self.stripped.strip()


@dataclass
class ArtifactPatterns:
    """Everything the scan looks for, for one template; build with :func:`patterns_for`."""

    template: str
    role_words: tuple[str, ...]             # this template's role words (what its headers leave when stripped)
    control_tokens: tuple[str, ...]         # every known control-token string (this template's, the registry's)
    stop_strings: tuple[str, ...]           # this template's end-of-turn strings and EOS: allowed at the very end
    bos_token: str | None
    own_headers: tuple[Header, ...]         # this template's role headers
    foreign_headers: tuple[Header, ...]     # other templates' headers that differ from this template's
    generation_prompt: str                  # rendered, edge whitespace removed
    control_names: tuple[str, ...]          # mangled control-token names (start_header_id, im_start)
    stop_ids: frozenset[int] = frozenset()  # from a tokenizer, when one is given
    bos_id: int | None = None
    own_controls: tuple[str, ...] = ()      # control tokens of this template and this tokenizer (text decisions)
    special_ids: dict[int, str] = field(default_factory=dict)   # the tokenizer's special ids (id decisions)
    header_ids: tuple[tuple[str, tuple[int, ...]], ...] = ()    # (role, ids) of this template's headers
    reasoning: tuple[str, ...] = COMMON_REASONING   # reasoning markup that is an artifact for this template
    tool_markers: tuple[str, ...] = COMMON_TOOL      # tool-call markers that are an artifact in a plain answer
    # ``decode(ids, skip_special_tokens=...)`` of the tokenizer: where in the text a header found in the ids lands
    decode: Callable[..., str] | None = field(default=None, repr=False, compare=False)
    # compiled
    control_re: re.Pattern | None = field(default=None, repr=False)
    own_re: re.Pattern | None = field(default=None, repr=False)
    foreign_tok_re: re.Pattern | None = field(default=None, repr=False)
    role_re: re.Pattern | None = field(default=None, repr=False)
    names_re: re.Pattern | None = field(default=None, repr=False)
    reasoning_re: re.Pattern | None = field(default=None, repr=False)
    tool_re: re.Pattern | None = field(default=None, repr=False)
    plain_headers: tuple[tuple[Header, re.Pattern], ...] = field(default=(), repr=False)

    def compile(self) -> ArtifactPatterns:
        words = "|".join(map(re.escape, sorted(self.role_words, key=len, reverse=True)))
        # a role word ends a word: "assistantship" is not one
        self.role_re = re.compile(rf"(?:{words})(?![A-Za-z])") if words else None
        self.control_re = _alternation([*self.control_tokens, *self.own_controls])
        self.own_re = _alternation(self.own_controls)
        own = set(self.own_controls)
        foreign = {t for t in self.control_tokens if t not in own and not taglike(t)}
        foreign |= {t for t in COMMON_HEADERS if not t.startswith("#")}
        foreign -= set(self.reasoning) | set(self.tool_markers)
        self.foreign_tok_re = _alternation(foreign)
        if self.control_names:
            alts = "|".join(map(re.escape, sorted(self.control_names, key=len, reverse=True)))
            self.names_re = re.compile(rf"(?<![A-Za-z0-9_])(?:{alts})(?![A-Za-z0-9_])")
        self.reasoning_re = _alternation(self.reasoning)
        self.tool_re = _alternation(self.tool_markers)
        plain = []
        for h in (*self.own_headers, *self.foreign_headers):
            if h.plain and h.rendered and not _WORD.match(h.rendered):
                plain.append(h)
        for s in COMMON_HEADERS:
            if s.startswith("#"):
                plain.append(Header("common", s[4:-1].lower(), s, s))
        seen: set[str] = set()
        out = []
        for h in plain:
            if h.rendered in seen:
                continue
            seen.add(h.rendered)
            body = h.rendered.rstrip(":").strip()
            # "### Instruction:" also bare ("### Instruction" ending a line); never "### Instructions"
            pat = re.escape(body) + (r"(?::|(?=[ \t]*(?:\n|\Z)))" if h.rendered.endswith(":") else r"(?![A-Za-z])")
            out.append((h, re.compile(pat)))
        self.plain_headers = tuple(out)
        return self

    def is_own(self, tok: str) -> bool:
        return tok in self.own_controls

    # -------------------------------------------------------------------------------------------- stripped view
    def strip_controls(self, text: str) -> tuple[str, list[int], list[int]]:
        """Remove every control-token string; return the stripped text and a breakpoint map back to ``text``.

        ``to_original(i)`` below turns an index in the stripped text into an index in ``text``.
        """
        if self.control_re is None:
            return text, [0], [0]
        parts: list[str] = []
        s_marks, o_marks = [0], [0]
        last = 0
        s_len = 0
        for m in self.control_re.finditer(text):
            parts.append(text[last:m.start()])
            s_len += m.start() - last
            last = m.end()
            s_marks.append(s_len)
            o_marks.append(last)
        if last == 0:
            return text, s_marks, o_marks
        parts.append(text[last:])
        return "".join(parts), s_marks, o_marks

    @staticmethod
    def to_original(i: int, s_marks: list[int], o_marks: list[int]) -> int:
        k = bisect_right(s_marks, i) - 1
        return o_marks[k] + (i - s_marks[k])


def _with_system(headers: dict[str, str]) -> dict[str, str]:
    """A template's role headers plus the system header its user and assistant headers imply, when both are the
    same text around the role name (Llama 3's ``<|start_header_id|>{role}<|end_header_id|>\\n\\n``): a template whose
    structure was inferred from user/assistant probes still knows the header a model leaks most (``system``)."""
    u, a = headers.get("user"), headers.get("assistant")
    if "system" in headers or not u or not a or "user" not in u or "assistant" not in a:
        return headers
    pre, post = u.split("user", 1)
    if a != pre + "assistant" + post:
        return headers
    return {**headers, "system": pre + "system" + post}


def patterns_for(meta: Any, *, known: Iterable[Any] | None = None, tokenizer: Any = None) -> ArtifactPatterns:
    """Artifact patterns for the template ``meta`` (a ``TemplateMeta``).

    ``known`` is the metadata of every other template whose headers count as foreign artifacts (default: the
    registry). ``tokenizer`` (a ``tmplcheck.validator.tokenizer.Tokenizer``) adds its special ids, stop ids and the
    BOS id for the id-based decisions, and its special-token strings to this template's control tokens.
    """
    others = list(known) if known is not None else known_templates()

    def tokens_of(m: Any) -> set[str]:
        s = {t for t in (m.special_tokens or ()) if t} | {t for t in (m.end_of_turn or ()) if t}
        return s | {t for t in (m.bos_token, m.eos_token) if t}

    own_ctl = tokens_of(meta)
    special_ids: dict[int, str] = {}
    if tokenizer is not None:
        for i in sorted(getattr(tokenizer, "special_ids", ()) or ()):
            s = tokenizer.id_to_token(i)
            if s:
                special_ids[i] = s
        own_ctl |= set(special_ids.values())
    controls = set(own_ctl)
    for m in others:
        controls |= tokens_of(m)

    def headers_of(m: Any) -> list[Header]:
        out = []
        for role, h in _with_system(m.role_headers or {}).items():
            if not h or not h.strip():
                continue
            body = h.strip()
            out.append(Header(m.name, role, body, _strip_all(h, controls), h[len(h.rstrip()):]))
        return out

    own = headers_of(meta)
    gp = (meta.generation_prompt or "").strip()
    own_rendered = {h.rendered for h in own} | ({gp} if gp else set())
    foreign: dict[str, Header] = {}
    words: set[str] = set()
    for h in own:
        w = h.stripped.strip()
        # a role word is what a header leaves once its control tokens are skipped: plain-text headers
        # ("USER:") leave nothing behind, they are header fragments
        if _WORD.match(w) and w != h.rendered and w.islower():
            words.add(w)
    for m in others:
        if m.name == meta.name:
            continue
        for h in headers_of(m):
            if h.rendered in own_rendered or h.rendered in foreign:
                continue
            distinctive = any(t in h.rendered for t in controls) or (
                len(h.rendered) >= 4 and not _WORD.match(h.rendered))
            if distinctive and not any(h.rendered in o for o in own_rendered):
                foreign[h.rendered] = h
    stop = tuple(t for t in (*(meta.end_of_turn or ()), meta.eos_token) if t)
    names = sorted({n for t in controls if (n := _inner_name(t))})
    stop_ids: frozenset[int] = frozenset()
    bos_id = None
    header_ids: list[tuple[str, tuple[int, ...]]] = []
    if tokenizer is not None:
        ids = set(getattr(tokenizer, "stop_ids", ()) or ())
        for t in stop:
            i = tokenizer.token_to_id(t)
            if i is not None:
                ids.add(i)
        stop_ids = frozenset(ids)
        stop += tuple(special_ids[i] for i in sorted(stop_ids) if i in special_ids and special_ids[i] not in stop)
        if meta.bos_token:
            bos_id = tokenizer.token_to_id(meta.bos_token)
        if bos_id is None:
            bos_id = getattr(tokenizer, "bos_id", None)
        for h in own:
            try:
                hid = tuple(tokenizer.encode(h.rendered, add_special_tokens=False).ids)
            except Exception:  # a header the tokenizer cannot encode has no id form
                continue
            if hid and any(i in special_ids for i in hid):
                header_ids.append((h.role, hid))
    # markup the template writes itself is its own business (a reasoning template's <think>)
    reasoning = tuple(t for t in COMMON_REASONING if t not in (meta.special_tokens or ()))
    tool = tuple(t for t in COMMON_TOOL if t not in (meta.special_tokens or ()))
    return ArtifactPatterns(
        template=meta.name,
        role_words=tuple(sorted(words)),
        control_tokens=tuple(sorted(controls, key=len, reverse=True)),
        stop_strings=stop,
        bos_token=meta.bos_token or None,
        own_headers=tuple(own),
        foreign_headers=tuple(foreign.values()),
        generation_prompt=gp,
        control_names=tuple(names),
        stop_ids=stop_ids,
        bos_id=bos_id,
        own_controls=tuple(sorted(own_ctl, key=len, reverse=True)),
        special_ids=special_ids,
        header_ids=tuple(header_ids),
        reasoning=reasoning,
        tool_markers=tool,
        decode=tokenizer.decode if tokenizer is not None else None,
    ).compile()
