"""The per-generation artifact checks (A codes).

Each check is a small pure function ``(gen, pats, ctx) -> Iterator[Finding]`` that never raises on bad data; a
generation gets at most one finding per code (the first occurrence, with the count in ``data``).

How a hit is judged, for every check:
- **ids first.** With ``output_ids`` and a tokenizer's special ids, a control token is a special id in the ids,
  nothing else: a look-alike string is text. Headers are also found as their id sequences, so an output decoded
  with special tokens skipped still shows them.
- **from text**, only this template's (and this tokenizer's) control-token strings are control tokens; every
  finding says which basis it came from (``data["basis"]``: ``ids`` or ``text``).
- **code and quotation**: a hit inside a fenced block, a backtick span or a quoted string is a model explaining
  markup, not leaking it: it is reported once as the info A013 (unless the ids say the tokens are real).
- **named in a sentence**: a token between a word and more words (``wraps prompts in [INST] and [/INST]
  markers``) is a mention; a model leaks markup after a sentence, at a line start, or glued to the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tmplcheck.artifacts.patterns import HARMONY_SKIPPED, WORD_PREFIXES, ArtifactPatterns, Header, taglike
from tmplcheck.validator.findings import Finding, finding
from tmplcheck.validator.textshow import escape_controls

SNIPPET = 24
_CTRL = re.compile(r"[\x00-\x1f]")
# a fenced block ends at the next line starting with its fence (a model may glue text after the fence)
_FENCE = re.compile(r"(?ms)^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1|\Z)")
_TICKS = re.compile(r"(`+)[^`\n]+?\1")
_QUOTES = re.compile(r'"[^"\n]{1,200}"|“[^”\n]{1,200}”|(?<![A-Za-z0-9])\'[^\'\n]{1,200}\'(?![A-Za-z0-9])')
_SPEAKER = re.compile(r"(?m)^[ \t]*([A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)?):")
# an HTML-style pair (<s>struck</s>), on one line or around a block; the opening tag not glued to another tag
_TAG_PAIR = re.compile(r"<([A-Za-z][A-Za-z0-9]*)>(?!<)(?:(?!</?\1>).){1,2000}?</\1>", re.S)


@dataclass
class Generation:
    """One generation row: the prompt it answered, the output text, and optionally ids and finish reason."""

    line: int
    output: str
    prompt: str | list[dict] | None = None
    output_ids: list[int] | None = None
    finish_reason: str | None = None
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def system(self) -> str | None:
        if isinstance(self.prompt, list):
            for m in self.prompt:
                if isinstance(m, dict) and m.get("role") == "system":
                    return _content_text(m.get("content")) or None
        return None

    @property
    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt, list):
            return "\n".join(_content_text(m.get("content")) for m in self.prompt if isinstance(m, dict))
        return ""

    @property
    def has_tools(self) -> bool:
        return bool(self.extra.get("tools"))


def _content_text(c: Any) -> str:
    """A message's text: the string, or the text parts of a typed content list."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _snip(text: str, start: int, end: int) -> str:
    a, b = max(0, start - SNIPPET), min(len(text), end + SNIPPET)
    s = ("…" if a else "") + text[a:b] + ("…" if b < len(text) else "")
    return escape_controls(s)


def _at(gen: Generation, code: str, msg: str, start: int, end: int, count: int = 1, *, view: str = "output",
        pointer: str = "/output", **data: Any) -> Finding:
    d = {"start": start, "end": end, "count": count, "view": view, **data}
    return finding(code, msg, path=gen.path, line=gen.line, pointer=pointer, data=d)


# ---------------------------------------------------------------------------------------------------- context
class Context:
    """What the checks share about one output: code and quote spans, the stripped view, the ids decision."""

    def __init__(self, gen: Generation, pats: ArtifactPatterns):
        text = gen.output
        self.gen, self.pats, self.text = gen, pats, text
        self.code = [m.span() for m in _FENCE.finditer(text)]
        self.code += [m.span() for m in _TICKS.finditer(text) if not self._inside(m.start(), m.end(), self.code)]
        self.quotes = [m.span() for m in _QUOTES.finditer(text)]
        self.pairs = [m.span() for m in _TAG_PAIR.finditer(text) if self._html_pair(m)]
        self.by_ids = bool(pats.special_ids) and gen.output_ids is not None
        self.basis = "ids" if self.by_ids else "text"
        self.shielded: list[tuple[int, int, str, str]] = []   # (start, end, what, where) in code or quotes
        self.view, self.s, self.o = pats.strip_controls(text)
        self.prompt = gen.prompt_text
        self._header_hits: dict[str, int] | None = None
        self._marks: dict[str, list[int]] | None = None
        self._landing: dict[int, set[int]] = {}

    @cached_property
    def user_text(self) -> str:
        """The user's messages (the whole prompt when it is a string): made only when a rule asks for it."""
        gen = self.gen
        if not isinstance(gen.prompt, list):
            return self.prompt
        return "\n".join(_content_text(m.get("content")) for m in gen.prompt
                         if isinstance(m, dict) and m.get("role") == "user")

    def _html_pair(self, m: re.Match) -> bool:
        """A tag pair is HTML unless it wraps chat markup ("<s>[INST] ... [/INST] answer</s>") or opens right
        after another control token ("</s><s>...")."""
        rx = self.pats.control_re
        if rx is None:
            return True
        a, b, n = m.start(), m.end(), len(m.group(1))
        if rx.search(self.text, a + n + 2, b - n - 3):
            return False
        return not any(x.end() == a for x in rx.finditer(self.text, max(0, a - 40), a))

    @staticmethod
    def _inside(a: int, b: int, spans: list[tuple[int, int]]) -> bool:
        return any(x <= a and b <= y for x, y in spans)

    def shield(self, a: int, b: int) -> str | None:
        """``code`` or ``quote`` when [a, b) lies in a code span or a quoted string."""
        if self._inside(a, b, self.code):
            return "code"
        if self._inside(a, b, self.quotes):
            return "quote"
        return None

    def mention(self, a: int, b: int) -> bool:
        """[a, b) is named in a sentence: a word and a space before, a space and more text (or punctuation) after;
        or it opens the answer as the subject of a sentence ("<|end|> is the token that...")."""
        t = self.text
        after = t[b:b + 24]
        if not t[:a].strip():
            return bool(re.match(r"[ \t]+[a-z]", after)) and not (
                self.pats.role_re and self.pats.role_re.match(after.lstrip(" \t")))
        if _SUBJECT.match(after) and re.search(r"[.!?:][ \t]+\Z", t[max(0, a - 4):a]):
            return True  # "Yes. <|eot_id|> is a special token": the subject of a new sentence
        return bool(re.search(r"[A-Za-z0-9,;:(][ \t]+\Z", t[max(0, a - 40):a])) and bool(
            re.match(r"[ \t]+[^\s]|[,.;:)]", after))

    def tag_paired(self, a: int, b: int) -> bool:
        """[a, b) opens or closes an HTML-style pair on its line (``<s>struck</s>``)."""
        return any((x == a or y == b) and x <= a and b <= y for x, y in self.pairs)

    def keep(self, a: int, b: int, what: str, *, weak: bool = False) -> bool:
        """Whether a hit at [a, b) counts; hits in code or quotes are remembered for A013."""
        where = self.shield(a, b)
        if where:
            self.shielded.append((a, b, what, where))
            return False
        if self.mention(a, b):
            return False
        return not (weak and self.tag_paired(a, b))

    def orig(self, i: int) -> int:
        return i if len(self.s) == 1 else ArtifactPatterns.to_original(i, self.s, self.o)

    def span(self, a: int, b: int) -> tuple[int, int]:
        """A [a, b) span of the stripped view in original offsets (the end stays before any removed token)."""
        return self.orig(a), (self.orig(b - 1) + 1 if b > a else self.orig(a))

    def header_hits(self) -> dict[str, int]:
        """role -> index in output_ids where this template's header (as ids) first appears."""
        if self._header_hits is None:
            self._header_hits = {}
            ids = self.gen.output_ids or []
            if self.by_ids:
                for role, hid in self.pats.header_ids:
                    k = _find_seq(ids, hid)
                    if k >= 0 and role not in self._header_hits:
                        self._header_hits[role] = k
        return self._header_hits

    def role_header_at(self, role: str | None, a: int) -> bool:
        """With ids: the template's ``role`` header stands in ``output_ids`` right where the role word at offset
        ``a`` of the output is: the word's tokens with the header's special ids before them (and after them, unless
        the ids end there). A role word whose tokens are ordinary text (``request.user``: ``request`` ``.user``, no
        special id next to them) is the model's word, whatever headers the ids hold elsewhere.

        Where a header lands in the text: the decode of the ids before the role word's tokens, in the kept view
        (special tokens written) or the skipped one, matched on the non-whitespace characters before ``a`` (a
        serving stack may trim or normalise spaces). Without a decoder the header anywhere in the ids confirms."""
        marks = self._role_marks().get(role or "")
        if not marks:
            return False
        decode = self.pats.decode
        if decode is None:
            return True
        ids = self.gen.output_ids or []
        want = _nonspace(self.text[:a])
        for j in marks:
            if j not in self._landing:
                try:
                    self._landing[j] = {_nonspace(decode(ids[:j], skip_special_tokens=skip)) for skip in (False, True)}
                except Exception:  # ids the tokenizer cannot decode place no header
                    self._landing[j] = set()
            if want in self._landing[j]:
                return True
        return False

    def _role_marks(self) -> dict[str, list[int]]:
        """role -> indices in output_ids where a role word's tokens start inside that role's header."""
        if self._marks is None:
            self._marks = {}
            ids = self.gen.output_ids or []
            special = self.pats.special_ids
            if self.by_ids:
                for role, hid in self.pats.header_ids:
                    p = 0
                    while p < len(hid) and hid[p] in special:
                        p += 1
                    q = len(hid)
                    while q > p and hid[q - 1] in special:
                        q -= 1
                    if p == q or (p == 0 and q == len(hid)):
                        continue  # a header without a word (Phi-3's <|user|>) or without a special id
                    pre, word, post = hid[:p], hid[p:q], hid[q:]
                    first = hid[0]
                    for k in range(len(ids) - q + 1):
                        if ids[k] != first or tuple(ids[k:k + p]) != pre or tuple(ids[k + p:k + q]) != word:
                            continue
                        rest = tuple(ids[k + q:k + len(hid)])
                        if rest == post[:len(rest)] and (rest == post or k + len(hid) > len(ids)):
                            self._marks.setdefault(role, []).append(k + p)   # the header, or cut by the ids' end
        return self._marks

    def requested(self, header: str) -> bool:
        """The prompt asks for this label itself (a script with a USER: speaker, a "### Response:" format)."""
        body = header.strip().rstrip(":").strip()
        return bool(body) and re.search(rf"(?<![A-Za-z]){re.escape(body)}(?![a-z])", self.prompt) is not None

    def script(self, header: str) -> bool:
        """The output is a script: speaker labels at line starts, some of them no template's header."""
        names = {m.group(1) for m in _SPEAKER.finditer(self.text)}
        body = header.strip().rstrip(":")
        return body in names and len(names) >= 2 and any(n not in _HEADER_NAMES for n in names)


# a token followed by one of these is what a sentence is about, not a leak
_SUBJECT = re.compile(r"[ \t]+(?:is|are|was|were|marks|means|ends|closes|opens|starts|separates|denotes|tells|"
                      r"must|should|can|cannot|never|always)\b")
_HEADER_NAMES = {"USER", "ASSISTANT", "SYSTEM", "Human", "Assistant", "User", "System"}


def _nonspace(s: str) -> int:
    return len(s) - sum(map(s.count, " \t\n\r\f\v"))


def _find_seq(ids: list[int], seq: tuple[int, ...]) -> int:
    n = len(seq)
    if not n:
        return -1
    first = seq[0]
    for k, i in enumerate(ids):
        if i == first and tuple(ids[k:k + n]) == seq:
            return k
    return -1


def _nth(text: str, s: str, n: int) -> int:
    i = -1
    for _ in range(n + 1):
        i = text.find(s, i + 1)
        if i < 0:
            return -1
    return i


# ------------------------------------------------------------------------------------------------------ checks
def check_control_tokens(gen: Generation, pats: ArtifactPatterns, ctx: Context) -> Iterator[Finding]:
    """A003 control tokens in the output (not the final end-of-turn, not BOS); A007 BOS."""
    text = gen.output
    if ctx.by_ids:
        ids = gen.output_ids or []
        last = len(ids) - 1
        allowed = set(pats.tool_markers) if gen.has_tools else set()
        ctl = [(k, i) for k, i in enumerate(ids) if i in pats.special_ids and i != pats.bos_id
               and not (k == last and i in pats.stop_ids) and pats.special_ids[i] not in allowed]
        if ctl:
            k, i = ctl[0]
            tok = pats.special_ids[i]
            nth = sum(1 for j in ids[:k] if j == i)
            a = _nth(text, tok, nth)
            toks = sorted({pats.special_ids[j] for _, j in ctl})
            msg = (f"control token {tok!r} (id {i}) at output_ids[{k}] ({len(ctl)}x: {', '.join(toks)})"
                   + (f": {_snip(text, a, a + len(tok))}" if a >= 0 else ""))
            if a >= 0:
                yield _at(gen, "A003", msg, a, a + len(tok), len(ctl), tokens=toks, basis="ids", index=k)
            else:
                yield finding("A003", msg, path=gen.path, line=gen.line, pointer=f"/output_ids/{k}",
                              data={"count": len(ctl), "view": "ids", "index": k, "tokens": toks, "basis": "ids"})
        if pats.bos_id is not None and pats.bos_id in ids:
            n = ids.count(pats.bos_id)
            k = ids.index(pats.bos_id)
            yield finding("A007", f"BOS id {pats.bos_id} at output_ids[{k}] ({n}x)", path=gen.path, line=gen.line,
                          pointer=f"/output_ids/{k}", data={"count": n, "view": "ids", "index": k, "basis": "ids"})
        return
    if pats.own_re is None:
        return
    tail = len(text.rstrip())
    ctl, bos = [], []
    for m in pats.own_re.finditer(text):
        t = m.group()
        if t != pats.bos_token and m.end() == tail and t in pats.stop_strings:
            continue  # the turn's own end-of-turn, kept in the text
        if gen.has_tools and t in pats.tool_markers:
            continue  # a tool call where tools were given
        if not ctx.keep(m.start(), m.end(), t, weak=taglike(t)):
            continue
        (bos if pats.bos_token and t == pats.bos_token else ctl).append(m)
    if ctl:
        m = ctl[0]
        toks = sorted({x.group() for x in ctl})
        yield _at(gen, "A003", f"control token {m.group()!r} in the text ({len(ctl)}x: {', '.join(toks)}): "
                               f"{_snip(text, m.start(), m.end())}", m.start(), m.end(), len(ctl), tokens=toks,
                  basis="text")
    if bos:
        m = bos[0]
        yield _at(gen, "A007", f"BOS {m.group()!r} inside the output ({len(bos)}x): {_snip(text, m.start(), m.end())}",
                  m.start(), m.end(), len(bos), basis="text")
    elif pats.bos_id is not None and gen.output_ids and pats.bos_id in gen.output_ids:
        n = gen.output_ids.count(pats.bos_id)
        k = gen.output_ids.index(pats.bos_id)
        yield finding("A007", f"BOS id {pats.bos_id} at output_ids[{k}] ({n}x)", path=gen.path, line=gen.line,
                      pointer=f"/output_ids/{k}", data={"count": n, "view": "ids", "index": k, "basis": "ids"})


def _own_header_code(pats: ArtifactPatterns, h: Header) -> str:
    return "A009" if h.role in ("assistant", "model") or h.rendered == pats.generation_prompt else "A005"


def check_headers(gen: Generation, pats: ArtifactPatterns, ctx: Context) -> Iterator[Finding]:
    """A004 other templates' headers and markers, mangled token names; A005 this template's non-assistant header
    (the model writes the next turn); A009 its generation prompt again."""
    text = gen.output
    hits: dict[str, list[tuple[int, int, str]]] = {"A004": [], "A005": [], "A009": []}
    # this template's headers that hold control tokens, as text
    for h in pats.own_headers:
        if h.plain or h.rendered not in text:
            continue
        code = _own_header_code(pats, h)
        for m in re.finditer(re.escape(h.rendered), text):
            if ctx.keep(m.start(), m.end(), h.rendered):
                hits[code].append((m.start(), m.end(), h.rendered))
    # plain-text headers (USER:, ### Instruction:), this template's and others'
    own_plain = {h.rendered for h in pats.own_headers if h.plain}
    for h, rx in pats.plain_headers:
        if h.rendered.rstrip(":") not in text:
            continue
        code = _own_header_code(pats, h) if h.rendered in own_plain else "A004"
        for m in rx.finditer(text):
            a, b = m.span()
            if ctx.requested(h.rendered) or ctx.script(h.rendered):
                continue
            if ctx.keep(a, b, h.rendered):
                hits[code].append((a, b, h.rendered))
    # other families' control tokens and headers
    if pats.foreign_tok_re is not None:
        for m in pats.foreign_tok_re.finditer(text):
            if ctx.keep(m.start(), m.end(), m.group()):
                hits["A004"].append((m.start(), m.end(), m.group()))
    if pats.names_re is not None:
        for m in pats.names_re.finditer(ctx.view):
            a, b = ctx.span(m.start(), m.end())
            if ctx.keep(a, b, m.group()):
                hits["A004"].append((a, b, m.group()))
    # this template's headers as ids (an output decoded with special tokens skipped still holds them)
    by_ids = ctx.header_hits()
    for code in ("A004", "A005", "A009"):
        found = sorted(hits[code])
        roles = [r for r, _ in by_ids.items() if (code == "A009") == (r in ("assistant", "model"))] \
            if code != "A004" else []
        if found:
            a, b, s = found[0]
            what = sorted({x[2] for x in found})
            msg = {"A004": f"header fragment {s!r} of another template ({len(found)}x): ",
                   "A005": f"the model writes a new turn: {s!r} ({len(found)}x): ",
                   "A009": f"the generation prompt {s!r} appears in the output ({len(found)}x): "}[code]
            yield _at(gen, code, msg + _snip(text, a, b), a, b, len(found), fragments=what, basis="text")
        elif roles:
            k = min(by_ids[r] for r in roles)
            role = next(r for r in roles if by_ids[r] == k)
            msg = (f"the {role} header of the template is in output_ids[{k}]"
                   + (" (the model writes a new turn)" if code == "A005" else " (the generation prompt again)"))
            yield finding(code, msg, path=gen.path, line=gen.line, pointer=f"/output_ids/{k}",
                          data={"view": "ids", "index": k, "role": role, "basis": "ids", "count": 1})


# a lowercase dotted name right before ".role" (request.user, self.ctx.system)
_ATTRIBUTE_OWNER = re.compile(r"(?:\A|[\s(\[{=,])((?:[a-z_][a-z0-9_]*\.)*[a-z_][a-z0-9_]*)\.\Z")


def _attribute(ctx: Context, line_before: str, word: str, before: str) -> bool:
    """From text alone, whether ``NAME.role`` reads as an attribute (``request.user``) rather than a sentence's last
    word with a stripped header glued on (``All done.assistant``): NAME is a lowercase dotted name, and either it
    looks like code (a chain ``a.b``, ``_`` or a digit, an abbreviation without a vowel: ``ctx``, ``cfg``, ``g``) or
    the role word is what the conversation is about (a word of the user's messages or of the answer before it)."""
    m = _ATTRIBUTE_OWNER.search(line_before)
    if m is None:
        return False
    name = m.group(1)
    if "." in name or re.search(r"[_0-9]", name) or not re.search(r"[aeiouy]", name):
        return True
    said = re.compile(rf"(?<![\w.]){re.escape(word)}\b", re.IGNORECASE)
    return bool(said.search(ctx.user_text) or said.search(before))


def _header_continues(pats: ArtifactPatterns, role: str | None, after: str) -> bool:
    """Whether ``after`` (the text after a role word) continues the way this template's header for ``role`` does:
    its tail ("\n\n" for Llama 3, "\n" for ChatML and Gemma) and then the turn's text."""
    tails = {h.tail for h in pats.own_headers if h.role == role and h.tail}
    return any(after.startswith(t) and after[len(t):len(t) + 1].strip() for t in tails)


def check_role_words(gen: Generation, pats: ArtifactPatterns, ctx: Context) -> Iterator[Finding]:
    """A001 a role word ending a line or the output, glued or alone (what a stripped header leaves); A002 one
    starting the output; A005 a stripped non-assistant header followed by the turn it opens."""
    if pats.role_re is None:
        return
    text = ctx.view
    first = len(text) - len(text.lstrip())
    role_of = {h.stripped.strip(): h.role for h in pats.own_headers}
    trailing, cont = [], []
    for m in pats.role_re.finditer(text):
        i, j = m.span()
        word = m.group()
        after = text[j:]
        if i == first:
            # a header's role word with the answer after it; a role word that is the whole output is an answer
            if re.match(r"[ \t]*(?:\n|:)\s*\S|[A-Z]", after):
                a, b = ctx.span(i, j)
                confirmed = ctx.by_ids and ctx.role_header_at(role_of.get(word), a)
                if ctx.by_ids and pats.header_ids and not confirmed:
                    continue  # no header of the ids stands here: the model wrote the word
                if ctx.keep(a, b, word) or confirmed:
                    yield _at(gen, "A002", f"output starts with the role word {word!r}: {_snip(gen.output, a, b)}",
                              a, b, word=word, basis=ctx.basis)
            continue
        if not re.match(r"[ \t]*(?:\n|\Z)", after):
            continue  # a role word ends a line or the output, or it is not one
        line_before = text[text.rfind("\n", 0, i) + 1:i]
        prev = text[i - 1]
        # with ids, a role word ending a line is a stripped header only where the ids hold that header around its
        # tokens (request.user is text tokens); from text alone, the shape below decides
        confirmed = ctx.by_ids and ctx.role_header_at(role_of.get(word), ctx.orig(i))
        if ctx.by_ids and pats.header_ids and not confirmed:
            continue  # no header of the ids stands here: the model wrote the word
        if line_before.strip() == "":
            pass  # alone on its line
        elif prev in " \t":
            continue  # "... talk to the user": a word in a sentence
        elif prev.isalpha() and prev.islower():
            stem = re.search(r"[A-Za-z]*\Z", line_before).group()
            if stem.lower() in WORD_PREFIXES and not confirmed:
                continue  # "subsystem", "superuser"
        elif prev == "." and not ctx.by_ids and _attribute(ctx, line_before, word, text[:i]) \
                and not _header_continues(pats, role_of.get(word), after):
            # "request.user" ending the output: an attribute (an info, as code is), unless the template's header
            # shape follows; with ids the header's own ids decide above
            ctx.shielded.append((*ctx.span(i, j), word, "code"))
            continue
        a, b = ctx.span(i, j)
        if not (ctx.keep(a, b, word) or confirmed):
            continue
        trailing.append((a, b, word))
        if role_of.get(word) not in ("assistant", "model", None) and re.match(r"[ \t]*\n+[ \t]*\S", after):
            cont.append((a, b, word))
    if trailing:
        a, b, w = trailing[0]
        words = sorted({h[2] for h in trailing})
        yield _at(gen, "A001", f"role word {w!r} ends a line ({len(trailing)}x: {', '.join(words)}): "
                               f"{_snip(gen.output, a, b)}", a, b, len(trailing), word=w, basis=ctx.basis)
    if cont:
        a, b, w = cont[0]
        yield _at(gen, "A005", f"the model writes a {role_of.get(w, w)} turn (stripped header): "
                               f"{_snip(gen.output, a, b)}", a, b, role=role_of.get(w, w), form="stripped",
                  basis=ctx.basis)


def check_markup(gen: Generation, pats: ArtifactPatterns, ctx: Context) -> Iterator[Finding]:
    """A011 reasoning markup in a final answer; A012 tool-call markers in a plain answer (no tools given)."""
    text = gen.output
    reasoning: list[tuple[int, int, str]] = []
    if pats.reasoning_re is not None:
        for m in pats.reasoning_re.finditer(text):
            if ctx.keep(m.start(), m.end(), m.group()):
                reasoning.append((m.start(), m.end(), m.group()))
    for m in HARMONY_SKIPPED.finditer(text):
        if ctx.keep(m.start(), m.end(), m.group()):
            reasoning.append((m.start(), m.end(), m.group()))
    if reasoning:
        reasoning.sort()
        a, b, s = reasoning[0]
        what = sorted({x[2] for x in reasoning})
        yield _at(gen, "A011", f"reasoning markup {s!r} in the answer ({len(reasoning)}x: {', '.join(what)}): "
                               f"{_snip(text, a, b)}", a, b, len(reasoning), markup=what, basis="text")
    if pats.tool_re is None or gen.has_tools:
        return
    tools = [(m.start(), m.end(), m.group()) for m in pats.tool_re.finditer(text)
             if ctx.keep(m.start(), m.end(), m.group())]
    if tools:
        a, b, s = tools[0]
        what = sorted({x[2] for x in tools})
        yield _at(gen, "A012", f"tool-call marker {s!r} in a plain answer ({len(tools)}x: {', '.join(what)}): "
                               f"{_snip(text, a, b)}", a, b, len(tools), markup=what, basis="text")


def check_runaway(gen: Generation, pats: ArtifactPatterns) -> Iterator[Finding]:
    """A006: finish_reason length, or output_ids without any stop id (and no finish_reason stop)."""
    if gen.finish_reason == "length":
        n = len(gen.output_ids) if gen.output_ids is not None else None
        yield finding("A006", "generation stopped at the token limit (finish_reason length)"
                      + (f" after {n} tokens" if n is not None else ""), path=gen.path, line=gen.line,
                      pointer="/finish_reason", data={"view": "meta"})
    elif gen.finish_reason is None and gen.output_ids is not None and pats.stop_ids \
            and not pats.stop_ids.intersection(gen.output_ids):
        yield finding("A006", f"none of the stop ids {sorted(pats.stop_ids)} in the {len(gen.output_ids)} "
                              "output_ids: the generation never ended its turn", path=gen.path, line=gen.line,
                      pointer="/output_ids", data={"view": "ids"})


def check_system_echo(gen: Generation, pats: ArtifactPatterns) -> Iterator[Finding]:
    """A008: the prompt's system message (or its first 48 characters) inside the output."""
    sysmsg = (gen.system or "").strip()
    if len(sysmsg) < 8:
        return
    needle = sysmsg if len(sysmsg) <= 48 else sysmsg[:48]
    i = gen.output.find(needle)
    if i >= 0:
        n = gen.output.count(needle)
        yield _at(gen, "A008", f"the system prompt is echoed ({n}x): {_snip(gen.output, i, i + len(needle))}",
                  i, i + len(needle), n)


def check_shielded(gen: Generation, ctx: Context) -> Iterator[Finding]:
    """A013 (info): template markup inside code or quotation, reported, not counted as a leak."""
    if not ctx.shielded:
        return
    hits = sorted(set(ctx.shielded))
    a, b, what, where = hits[0]
    kinds = sorted({h[2] for h in hits})
    yield _at(gen, "A013", f"template markup {what!r} inside {'code' if where == 'code' else 'a quotation'} "
                           f"({len(hits)}x: {', '.join(kinds[:6])}): {_snip(gen.output, a, b)}", a, b, len(hits),
              markup=kinds, where=where, basis=ctx.basis)


def scan_generation(gen: Generation, pats: ArtifactPatterns) -> list[Finding]:
    """Every A finding for one generation (at most one per code)."""
    ctx = Context(gen, pats)
    out: list[Finding] = []
    out += check_control_tokens(gen, pats, ctx)
    out += check_headers(gen, pats, ctx)
    out += check_role_words(gen, pats, ctx)
    out += check_markup(gen, pats, ctx)
    out += check_runaway(gen, pats)
    out += check_system_echo(gen, pats)
    seen: set[str] = set()
    uniq = []
    for f in out:
        if f.code not in seen:
            seen.add(f.code)
            uniq.append(f)
    uniq += check_shielded(gen, ctx)
    return uniq
