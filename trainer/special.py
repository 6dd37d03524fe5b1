"""The special tokens the trainer owns instead of inheriting library side effects.

- the stop ids saved in ``generation_config.json``: the template's end-of-turn ids plus the tokenizer's eos (and
  any stop ids its generation config already knew) — for Llama 3 both ``<|end_of_text|>`` 128001 and ``<|eot_id|>``
  128009;
- the pad token: chosen explicitly, never an end-of-turn/stop token, BOS or a token the template writes;
- no double BOS in the encoded ids.

Pure functions over a validator ``Tokenizer`` / ``Template`` and (for the pad) an HF tokenizer; no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class TokenSetupError(ValueError):
    """The template and the tokenizer do not fit together (a control token the vocabulary lacks, ...)."""


#: pad tokens that exist in real vocabularies, in order of preference
NAMED_PADS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>", "<|PAD_TOKEN|>",
              "<|fim_pad|>")
#: reserved/unused special tokens a vocabulary keeps for later use: a pad that nothing else means
_RESERVED = re.compile(r"^(<\|reserved_special_token_(\d+)\|>|<\|reserved_(\d+)\|>|<unused(\d+)>|\[unused(\d+)\])$")
ADDED_PAD = "<|tmplcheck_pad|>"


def single_id(tok: Any, s: str) -> int | None:
    """The id of control-token string ``s`` when the tokenizer maps it to exactly one id, else None."""
    i = tok.token_to_id(s)
    if i is not None:
        return i
    ids = tok.encode(s, add_special_tokens=False).ids
    return ids[0] if len(ids) == 1 else None


def end_of_turn_ids(template: Any, tok: Any) -> list[int]:
    """The ids of the template's end-of-turn strings; ``TokenSetupError`` naming any string the vocabulary lacks."""
    out: list[int] = []
    missing = []
    for s in template.meta.end_of_turn:
        i = single_id(tok, s)
        if i is None:
            missing.append(s)
        elif i not in out:
            out.append(i)
    if missing:
        raise TokenSetupError(
            f"template {template.meta.name!r} ends assistant turns with {', '.join(map(repr, missing))}, which "
            f"tokenizer {tok.name!r} does not have as a single token: the model could never learn or emit the "
            "stop. Use the tokenizer the template was written for (--tokenizer).")
    return out


def template_token_ids(template: Any, tok: Any) -> dict[str, int]:
    """Every control-token string the template writes → its id; ``TokenSetupError`` for those the vocabulary
    lacks (the template writes tokens this tokenizer would split into text pieces)."""
    out: dict[str, int] = {}
    missing = []
    for s in template.meta.special_tokens:
        i = single_id(tok, s)
        if i is None:
            missing.append(s)
        else:
            out[s] = i
    if missing:
        raise TokenSetupError(
            f"template {template.meta.name!r} writes {', '.join(map(repr, missing))}, which tokenizer {tok.name!r} "
            "lacks as single tokens: the template and the tokenizer do not belong together.")
    return out


def stop_ids(template: Any, tok: Any) -> list[int]:
    """Sorted stop ids for generation: the template's end-of-turn ids, the tokenizer's eos and its known stops."""
    ids = set(end_of_turn_ids(template, tok))
    ids.update(getattr(tok, "stop_ids", ()) or ())
    if getattr(tok, "eos_id", None) is not None:
        ids.add(tok.eos_id)
    if not ids:
        raise TokenSetupError(f"neither template {template.meta.name!r} nor tokenizer {tok.name!r} names an "
                              "end-of-turn or eos token: generation would never stop")
    return sorted(ids)


@dataclass(frozen=True)
class PadChoice:
    token: str
    id: int | None      # None until an added token gets its id
    added: bool         # a new token was added to the vocabulary (the embeddings must grow)
    reason: str


def choose_pad(hf_tok: Any, *, avoid_ids: set[int], avoid_tokens: set[str] = frozenset()) -> PadChoice:
    """Pick a pad token that is none of ``avoid_ids`` (stop ids, BOS, ids the template writes).

    Order: the tokenizer's own pad token when it is safe; a pad token the vocabulary already has (Llama 3.1's
    ``<|finetune_right_pad_id|>``, ``<pad>``, ...); the highest-numbered reserved special token (Llama 3's
    ``<|reserved_special_token_N|>``, Gemma's ``<unusedN>``); else a new ``<|tmplcheck_pad|>`` token.
    """
    vocab: dict[str, int] = hf_tok.get_vocab()

    def ok(token: str | None) -> bool:
        return bool(token) and token in vocab and vocab[token] not in avoid_ids and token not in avoid_tokens

    own = getattr(hf_tok, "pad_token", None)
    if ok(own):
        return PadChoice(own, vocab[own], False, "the tokenizer's own pad token")
    for t in NAMED_PADS:
        if ok(t):
            return PadChoice(t, vocab[t], False, "a pad token of the vocabulary")
    reserved = []
    for t, i in vocab.items():
        m = _RESERVED.match(t)
        if m and ok(t):
            num = int(next(g for g in m.groups()[1:] if g is not None))
            reserved.append((num, i, t))
    if reserved:
        _, i, t = max(reserved)
        return PadChoice(t, i, False, "an unused reserved special token")
    return PadChoice(ADDED_PAD, None, True, "no safe pad token in the vocabulary: added one")


def check_bos(ids: list[int], bos_id: int | None, *, where: str) -> None:
    """Refuse double BOS (the template writes BOS and the tokenizer adds it again)."""
    if bos_id is None or len(ids) < 2:
        return
    if ids[0] == bos_id and ids[1] == bos_id:
        raise TokenSetupError(f"{where}: the encoded row starts with BOS twice (the template writes "
                              "bos_token and the tokenizer adds it again); the gate reports this as a K code")
