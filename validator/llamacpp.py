"""llama.cpp's built-in chat formats, through llama-cpp-python's low-level binding: rendering and detection.

``llama_chat_apply_template(tmpl, chat, n_msg, add_ass, buf, length)`` needs no model: ``tmpl`` is either one of the
built-in format names (``llama_chat_builtin_templates``) or a template text that llama.cpp *detects* a built-in
format from (substring tests, first match wins; see LLAMA_CPP_NOTES). It returns the full byte length of the result
(call again with a larger buffer when that is more than the buffer), or -1 when it recognises nothing.

The per-row comparison with the training render (X codes) is ``validator/crosscheck.py``.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tmplcheck.validator import crossdiff as cd


class UnsupportedTemplate(ValueError):
    """llama.cpp does not recognise the template (``llama_chat_apply_template`` returned -1)."""


def _lib():
    import llama_cpp  # noqa: PLC0415 - loads the shared library; only when llama.cpp is actually used

    return llama_cpp


# ------------------------------------------------------------------------------------------------------ the binding
@functools.lru_cache(maxsize=1)
def _builtins() -> tuple[str, ...]:
    lib = _lib()
    n = lib.llama_chat_builtin_templates(None, 0)
    if n <= 0:
        return ()
    arr = (ctypes.c_char_p * n)()
    got = lib.llama_chat_builtin_templates(arr, n)
    return tuple(arr[i].decode("utf-8") for i in range(min(n, got)))


def builtin_templates() -> list[str]:
    """The built-in format names of the linked llama.cpp, byte-sorted as it returns them (54 in 0.3.36)."""
    return list(_builtins())


#: Formats llama.cpp can detect but has no name for: the template string that selects each.
UNNAMED = {"dots1": "<|endofuserprompt|>"}


def _as_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI typed parts: the text parts, as the dataset reader joins them
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise TypeError(f"message content must be a string, got {type(content).__name__}")


@dataclass(frozen=True)
class LlamaCppRender:
    text: str
    truncated: tuple[int, ...] = ()   # messages whose role or content llama.cpp cut at a NUL
    regrowths: int = 0                # times the output buffer was too small


def _apply(tmpl: bytes, pairs: Sequence[tuple[str, str]], add_ass: bool, initial: int | None) -> tuple[bytes, int]:
    """Call ``llama_chat_apply_template``, growing the buffer until the whole result fits. Returns (bytes, regrowths)."""
    lib = _lib()
    enc = [(r.encode("utf-8"), c.encode("utf-8")) for r, c in pairs]
    arr = (lib.llama_chat_message * max(1, len(enc)))()
    for i, (r, c) in enumerate(enc):
        arr[i].role = r
        arr[i].content = c
    size = initial if initial is not None else sum(len(r) + len(c) for r, c in enc) + 48 * len(enc) + 128
    size = max(1, size)
    regrowths = 0
    while True:
        buf = ctypes.create_string_buffer(size)
        res = lib.llama_chat_apply_template(tmpl, arr, len(enc), add_ass, buf, size)
        if res < 0:
            raise UnsupportedTemplate("llama.cpp does not recognise this chat template (llama_chat_apply_template "
                                      f"returned {res})")
        if res <= size:
            return buf.raw[:res], regrowths
        size = res   # llama.cpp copied only `size` bytes: call again with room for the full result
        regrowths += 1


class LlamaCppRenderer:
    """Render conversations the way llama.cpp's built-in chat formats do.

    ``template_source_or_builtin_name`` is a built-in name (``"llama3"``, ``"chatml"``, ...) or a template text from
    which llama.cpp detects one. ``render`` raises ``UnsupportedTemplate`` when llama.cpp recognises nothing.
    Role and content are C strings to llama.cpp: a NUL cuts them there (``render_detailed`` reports which).
    """

    def __init__(self, template_source_or_builtin_name: str, *, initial_buffer: int | None = None):
        self.template = template_source_or_builtin_name
        self.initial_buffer = initial_buffer
        arg = UNNAMED.get(self.template, self.template)
        self._tmpl = arg.encode("utf-8")
        self.builtin = self.template if self.template in _builtins() or self.template in UNNAMED else \
            detect(self.template)
        self.regrowths = 0  # total over this renderer's life

    @property
    def supported(self) -> bool:
        return self.builtin is not None

    def render_detailed(self, messages: Iterable[dict], *, add_generation_prompt: bool = False,
                        tools: Any = None) -> LlamaCppRender:
        """Like ``render``; ``tools`` are accepted and ignored (llama.cpp's built-in formats have no tool support)."""
        pairs = []
        truncated = []
        for i, m in enumerate(messages):
            role, content = str(m.get("role", "")), _as_text(m.get("content"))
            if "\0" in role or "\0" in content:
                truncated.append(i)
                role, content = role.split("\0", 1)[0], content.split("\0", 1)[0]
            pairs.append((role, content))
        raw, grown = _apply(self._tmpl, pairs, bool(add_generation_prompt), self.initial_buffer)
        self.regrowths += grown
        return LlamaCppRender(raw.decode("utf-8", errors="replace"), tuple(truncated), grown)

    def render(self, messages: Iterable[dict], *, add_generation_prompt: bool = False, tools: Any = None) -> str:
        return self.render_detailed(messages, add_generation_prompt=add_generation_prompt, tools=tools).text


def _render_pairs(tmpl: str, pairs: cd.Messages, add_ass: bool) -> str:
    return _apply(UNNAMED.get(tmpl, tmpl).encode("utf-8"), pairs, add_ass, None)[0].decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------------------- detection
# Probe conversations whose renders tell every built-in format apart (granite-4.0 and -4.1 format identically).
_PROBES: tuple[tuple[cd.Messages, bool], ...] = (
    ((("system", " S0 \n"), ("user", " U1 \n"), ("assistant", " A1 \n"), ("user", "U2")), True),
    ((("system", " S0 \n"), ("user", " U1 \n"), ("assistant", " A1 \n"), ("user", "U2"), ("assistant", "A2")), False),
    ((("user", "u"), ("assistant_tool_call", "c"), ("tool", "t"), ("assistant", "a"), ("system", "s2"),
      ("user", "u3")), True),
    ((("user", "x"),), False),
)


def _fingerprint(tmpl: str) -> tuple[str, ...] | None:
    try:
        return tuple(_render_pairs(tmpl, msgs, add) for msgs, add in _PROBES)
    except UnsupportedTemplate:
        return None


@functools.lru_cache(maxsize=1)
def _builtin_fingerprints() -> dict[str, tuple[str, ...]]:
    out = {name: _fingerprint(name) for name in _builtins()}
    out.update({name: _fingerprint(name) for name in UNNAMED})
    return {k: v for k, v in out.items() if v is not None}


@functools.lru_cache(maxsize=256)
def detect(template_source: str) -> str | None:
    """The built-in format llama.cpp picks for this template text, or None when it returns -1.

    Measured, not guessed: the text's renders of a few probe conversations are matched against every built-in's;
    the rule port (``detect_by_rules``) only breaks ties between formats that render identically. ``"dots1"`` is
    llama.cpp's one detectable format without a name.
    """
    if template_source in _builtins():
        return template_source
    fp = _fingerprint(template_source)
    if fp is None:
        return None
    matches = [name for name, f in _builtin_fingerprints().items() if f == fp]
    if len(matches) == 1:
        return matches[0]
    guess = detect_by_rules(template_source)
    if guess in matches:
        return guess
    return matches[0] if matches else guess


def detect_by_rules(t: str) -> str | None:
    """A port of ``llm_chat_detect_template`` (llama.cpp, vendored in llama-cpp-python 0.3.36); None = unknown.

    Used to break ties in ``detect``; the tests check it against the library on every upstream template.
    """
    if t in _builtins() or t in UNNAMED:
        return t
    has = t.__contains__
    if has("<|im_start|>"):
        return "phi4" if has("<|im_sep|>") else "smolvlm" if has("<end_of_utterance>") else "chatml"
    if t.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            if has(" [INST]"):
                return "mistral-v1"
            return "mistral-v3-tekken" if has('"[INST]"') else "mistral-v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        return "llama2-sys" if has("<<SYS>>") else "llama2"
    if has("<|assistant|>") and has("<|end|>"):
        return "phi3"
    if has("[gMASK]<sop>"):
        return "chatglm4"
    if has("<|assistant|>") and has("<|user|>"):
        return "exaone-moe" if has("<|tool_declare|>") else "falcon3" if has("</s>") else "glmedge"
    if has("<|{{ item['role'] }}|>") and has("<|begin_of_image|>"):
        return "glmedge"
    if has("<|user|>") and has("<|endoftext|>"):
        return "zephyr"
    if has("bos_token + message['role']"):
        return "monarch"
    if has("<start_of_turn>"):
        return "gemma"
    if has("'\\n\\nAssistant: ' + eos_token"):
        return "orion"
    if has("GPT4 Correct "):
        return "openchat"
    if has("USER: ") and has("ASSISTANT: "):
        return "vicuna-orca" if has("SYSTEM: ") else "vicuna"
    if has("### Instruction:") and has("<|EOT|>"):
        return "deepseek"
    if has("<|START_OF_TURN_TOKEN|>") and has("<|USER_TOKEN|>"):
        return "command-r"
    if has("<|start_header_id|>") and has("<|end_header_id|>"):
        return "llama3"
    if has("[gMASK]sop"):
        return "chatglm3"
    if has("<用户>"):
        return "minicpm"
    if has("'Assistant: ' + message['content'] + eos_token"):
        return "deepseek2"
    if has("<｜Assistant｜>") and has("<｜User｜>") and has("<｜end▁of▁sentence｜>"):
        return "deepseek3"
    if has("[|system|]") and has("[|assistant|]") and has("[|endofturn|]"):
        return "exaone4" if has("[|tool|]") else "exaone3"
    if has("rwkv-world") or has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}"):
        return "rwkv-world"
    if has("<|start_of_role|>"):
        if has("<tool_call>") or has("<tools>"):
            return "granite-4.0" if has("g4_default_system_message") else "granite-4.1"
        return "granite"
    if has("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]"):
        return "gigachat"
    if has("<|role_start|>"):
        return "megrez"
    if has(" Ассистент:"):
        return "yandex"
    if has("<role>ASSISTANT</role>") and has("'HUMAN'"):
        return "bailing"
    if has("<role>ASSISTANT</role>") and has('"HUMAN"') and has("<think>"):
        return "bailing-think"
    if has("<role>ASSISTANT</role>") and has("<role>HUMAN</role>") and has("<|role_end|>"):
        return "bailing2"
    if has("<|header_start|>") and has("<|header_end|>"):
        return "llama4"
    if has("<|endofuserprompt|>"):
        return "dots1"
    if has("<|extra_0|>") and has("<|extra_4|>"):
        return "hunyuan-moe"
    if has("<|start|>") and has("<|channel|>"):
        return "gpt-oss"
    if has("<｜hy_Assistant｜>") and has("<｜hy_begin▁of▁sentence｜>"):
        return "hunyuan-vl"
    if has("<｜hy_Assistant｜>") and has("<｜hy_place▁holder▁no▁3｜>"):
        return "hunyuan-dense"
    if has("<|im_assistant|>assistant<|im_middle|>"):
        return "kimi-k2"
    if has("<seed:bos>"):
        return "seed_oss"
    if has("'Assistant: '  + message['content'] + '<|separator|>"):
        return "grok-2"
    if has("[unused9]系统：[unused10]"):
        return "pangu-embedded"
    if has("<|begin|>") and has("<|end|>") and has("<|content|>"):
        return "solar-open"
    return None


@functools.lru_cache(maxsize=None)
def trimmed_roles(builtin: str) -> frozenset[str]:
    """Roles whose content this built-in strips (C whitespace), measured by rendering padded content."""
    pad = "\t \n"
    msgs = tuple((r, f"{pad}{r[0].upper()}q{i}z{pad}") for i, r in
                 enumerate(("system", "user", "assistant", "user", "assistant")))
    try:
        text = _render_pairs(builtin, msgs, False)
    except UnsupportedTemplate:
        return frozenset()
    out = set()
    for role, content in msgs:
        core = cd.c_strip(content)
        if core in text and content not in text:
            out.add(role)
    return frozenset(out)


def _family(name: str) -> str:
    m = re.match(r"[a-z]+", name)
    return m.group(0) if m else name


def alternates(builtin: str) -> list[str]:
    """Other built-ins of the same family, closest names first (mistral-v7 → mistral-v7-tekken, mistral-v3...)."""
    fam = _family(builtin)

    def shared(n: str) -> int:
        k = 0
        while k < min(len(n), len(builtin)) and n[k] == builtin[k]:
            k += 1
        return k

    same = [n for n in _builtins() if n != builtin and _family(n) == fam]
    return sorted(same, key=lambda n: (-shared(n), n))
