"""Artifact patterns, derived from template metadata.

Nothing here is hand-written per model family: role words, control-token strings, rendered headers and their
stripped forms, the generation prompt and BOS all come from ``TemplateMeta`` (the template being scanned, plus
every template in the registry for the "foreign" patterns). A new template brings its own patterns.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"^[A-Za-z][A-Za-z_]*$")


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
    if "_" in inner and len(inner) >= 6 and re.fullmatch(r"[A-Za-z0-9_]+", inner):
        return inner
    return None


def _alternation(strings: Iterable[str]) -> re.Pattern | None:
    uniq = sorted({s for s in strings if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, uniq))) if uniq else None


@dataclass(frozen=True)
class Header:
    template: str
    role: str
    rendered: str        # as the template writes it, trailing whitespace removed
    stripped: str        # with every control token removed (what a serving stack that skips special tokens shows)


@dataclass
class ArtifactPatterns:
    """Everything the scan looks for, for one template; build with :func:`patterns_for`."""

    template: str
    role_words: tuple[str, ...]
    control_tokens: tuple[str, ...]         # every known control-token string (this template's and the registry's)
    stop_strings: tuple[str, ...]           # this template's end-of-turn strings and EOS: allowed at the very end
    bos_token: str | None
    own_headers: tuple[Header, ...]         # this template's role headers
    foreign_headers: tuple[Header, ...]     # other templates' headers that differ from this template's
    generation_prompt: str                  # rendered, trailing whitespace removed
    control_names: tuple[str, ...]          # mangled control-token names (start_header_id, im_start)
    stop_ids: frozenset[int] = frozenset()  # from a tokenizer, when one is given
    bos_id: int | None = None
    # compiled
    control_re: re.Pattern | None = field(default=None, repr=False)
    role_end_re: re.Pattern | None = field(default=None, repr=False)
    role_start_re: re.Pattern | None = field(default=None, repr=False)
    foreign_re: re.Pattern | None = field(default=None, repr=False)        # headers holding control tokens
    foreign_plain_re: re.Pattern | None = field(default=None, repr=False)  # plain-text headers, at a line start
    names_re: re.Pattern | None = field(default=None, repr=False)
    continuation: tuple[tuple[str, str, re.Pattern | None, re.Pattern | None], ...] = field(default=(), repr=False)
    gen_prompt_re: re.Pattern | None = field(default=None, repr=False)

    def compile(self) -> ArtifactPatterns:
        words = "|".join(map(re.escape, sorted(self.role_words, key=len, reverse=True)))
        if words:
            self.role_end_re = re.compile(rf"(?<![a-z])(?:{words})(?=[ \t]*(?:\n|$))")
            self.role_start_re = re.compile(rf"\A\s*({words})(?=[ \t]*(?:\n|:|$)|[A-Z])")
        self.control_re = _alternation(self.control_tokens)
        ctl = [h.rendered for h in self.foreign_headers if any(t in h.rendered for t in self.control_tokens)]
        plain = [h.rendered for h in self.foreign_headers if h.rendered not in ctl]
        self.foreign_re = _alternation(ctl)
        if plain:
            alts = "|".join(map(re.escape, sorted(set(plain), key=len, reverse=True)))
            self.foreign_plain_re = re.compile(rf"(?m)^[ \t]*(?:{alts})")
        if self.control_names:
            alts = "|".join(map(re.escape, sorted(self.control_names, key=len, reverse=True)))
            self.names_re = re.compile(rf"(?<![A-Za-z0-9])(?:{alts})(?![A-Za-z0-9])")
        cont = []
        for h in self.own_headers:
            if h.role in ("assistant", "model"):
                continue
            rendered = re.compile(re.escape(h.rendered)) if h.rendered and h.rendered != h.stripped.strip() else None
            # the stripped form (``user\n\n``) must start at a boundary and be followed by the turn's text
            stripped = None
            word = h.stripped.strip()
            if word:
                stripped = re.compile(rf"(?<![a-z ])({re.escape(h.stripped.lstrip())})(?=[ \t]*\S)")
            cont.append((h.role, h.rendered, rendered, stripped))
        self.continuation = tuple(cont)
        gp = self.generation_prompt
        self.gen_prompt_re = re.compile(re.escape(gp)) if gp and gp != _strip_all(gp, self.control_tokens).strip() \
            else None
        return self

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


def patterns_for(meta: Any, *, known: Iterable[Any] | None = None, tokenizer: Any = None) -> ArtifactPatterns:
    """Artifact patterns for the template ``meta`` (a ``TemplateMeta``).

    ``known`` is the metadata of every other template whose control tokens and headers count as artifacts
    (default: the registry). ``tokenizer`` (a ``tmplcheck.validator.tokenizer.Tokenizer``) adds stop ids and the BOS
    id for the id-based checks.
    """
    others = list(known) if known is not None else known_templates()
    controls: set[str] = set()
    for m in [meta, *others]:
        controls.update(t for t in (m.special_tokens or ()) if t)
        controls.update(t for t in (m.end_of_turn or ()) if t)
        for t in (m.bos_token, m.eos_token):
            if t:
                controls.add(t)

    def headers_of(m: Any) -> list[Header]:
        out = []
        for role, h in (m.role_headers or {}).items():
            if not h:
                continue
            out.append(Header(m.name, role, h.rstrip(), _strip_all(h, controls)))
        return out

    own = headers_of(meta)
    own_rendered = {h.rendered for h in own} | {meta.generation_prompt.rstrip()} if meta.generation_prompt else \
        {h.rendered for h in own}
    foreign: dict[str, Header] = {}
    words: set[str] = set()
    for m in [meta, *others]:
        for h in headers_of(m):
            w = h.stripped.strip()
            # a role word is what a header leaves once its control tokens are skipped: plain-text headers
            # ("USER:") leave nothing behind, they are header fragments (A004)
            if _WORD.match(w) and w != h.rendered.strip() and w.islower():
                words.add(w)
            if m is meta or h.rendered in own_rendered or h.rendered in foreign:
                continue
            distinctive = any(t in h.rendered for t in controls) or (
                len(h.rendered) >= 4 and not _WORD.match(h.rendered.strip()))
            # a header that is only a bare role word is the role-word checks' business
            if distinctive and not any(h.rendered in o for o in own_rendered):
                foreign[h.rendered] = h
    stop = tuple(t for t in (*(meta.end_of_turn or ()), meta.eos_token) if t)
    names = sorted({n for t in controls if (n := _inner_name(t))})
    stop_ids: frozenset[int] = frozenset()
    bos_id = None
    if tokenizer is not None:
        ids = set(getattr(tokenizer, "stop_ids", ()) or ())
        for t in stop:
            i = tokenizer.token_to_id(t)
            if i is not None:
                ids.add(i)
        stop_ids = frozenset(ids)
        if meta.bos_token:
            bos_id = tokenizer.token_to_id(meta.bos_token)
        if bos_id is None:
            bos_id = getattr(tokenizer, "bos_id", None)
    pats = ArtifactPatterns(
        template=meta.name,
        role_words=tuple(sorted(words)),
        control_tokens=tuple(sorted(controls, key=len, reverse=True)),
        stop_strings=stop,
        bos_token=meta.bos_token or None,
        own_headers=tuple(own),
        foreign_headers=tuple(foreign.values()),
        generation_prompt=(meta.generation_prompt or "").rstrip(),
        control_names=tuple(names),
        stop_ids=stop_ids,
        bos_id=bos_id,
    ).compile()
    return pats
