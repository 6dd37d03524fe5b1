"""Audit a tokenized dataset (or a trainer's batch): recover each row's turns from its ids and the template's
structure (``validator/tokenized_turns.py``), and check what its labels train (L codes).

Pure and torch-free: a row is ``input_ids`` plus optional ``labels`` / ``assistant_masks`` / ``completion_mask`` /
``attention_mask`` / ``position_ids`` as lists of ints (what a ``datasets`` row or ``tensor.tolist()`` gives).
An assistant turn trains from the end of its header (the inference prompt) through its end-of-turn, exactly what
``validator/checks/masks.py`` expects of tmplcheck's own labels; everything else (BOS, headers, system/user/tool
turns, the text after an end-of-turn, padding) is masked. Which assistant turns train follows
:func:`tmplcheck.validator.training_flags.trained_turns` (``train_on``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tmplcheck.validator.findings import Finding, finding
from tmplcheck.validator.tokenized_turns import Structure, TokenBytes, Turn, build_structure, recover_turns
from tmplcheck.validator.training_flags import DEFAULT_TRAIN_ON, trained_turns, valid_train_on

__all__ = ["IGNORE", "MASK_COLUMNS", "RowAudit", "Structure", "TokenBytes", "Turn", "audit_row", "audit_rows",
           "batch_rows", "build_structure", "read_row", "recover_turns"]

IGNORE = -100
#: the mask columns a row may carry instead of labels
MASK_COLUMNS = ("assistant_masks", "completion_mask")


# --------------------------------------------------------------------------------------------------------------
# one row
# --------------------------------------------------------------------------------------------------------------

@dataclass
class RowAudit:
    """A row's recovered turns, its actual and expected labels (True trained, False masked, None either)."""

    ids: list[int]
    actual: list[bool]
    expected: list[bool | None]
    pads: list[bool]
    turns: list[Turn]
    regions: list[str]            # per token: "role:part" (e.g. "user:content", "assistant:header", "template")
    findings: list[Finding] = field(default_factory=list)
    conventional: list[tuple[int, int, str]] = field(default_factory=list)   # trained by convention (L014)


def _as_int_list(v: Any) -> list | None:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    return None


def _where(path: str, row: int, line: int | None) -> dict:
    return {"path": path, "line": line if line is not None else row + 1}


def read_row(row: Mapping[str, Any], st: Structure, *, index: int, path: str = "", line: int | None = None
             ) -> tuple[dict | None, list[Finding]]:
    """Validate one row's columns; ``(columns as int lists, [])`` or ``(None, [L012...])``."""
    loc = _where(path, index, line)
    bad: list[Finding] = []

    def fail(msg: str, pointer: str) -> tuple[None, list[Finding]]:
        bad.append(finding("L012", f"row {index}: {msg}", pointer=pointer, data={"row": index}, **loc))
        return None, bad

    if "__error__" in row:   # the reader could not make a row of it (bad JSON, not an object)
        return fail(str(row["__error__"]), "")
    if "input_ids" not in row or row["input_ids"] is None:
        return fail("no input_ids", "/input_ids")
    ids = _as_int_list(row["input_ids"])
    if ids is None:
        return fail(f"input_ids is a {type(row['input_ids']).__name__}, not a list of token ids", "/input_ids")
    if ids and isinstance(ids[0], list):   # a batch dimension of one (a collated row saved as [[...]])
        if len(ids) != 1:
            return fail(f"input_ids is nested ({len(ids)} sequences); give one sequence per row", "/input_ids")
        ids = ids[0]
    for k, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            return fail(f"input_ids[{k}] is {t!r}, not an integer token id", f"/input_ids/{k}")
        if t < 0 or t >= st.vocab_size:
            return fail(f"input_ids[{k}] = {t} is outside the tokenizer's vocabulary (0..{st.vocab_size - 1}): "
                        "the dataset was tokenized with another tokenizer", f"/input_ids/{k}")
    out: dict[str, list[int]] = {"input_ids": ids}
    for col in ("labels", *MASK_COLUMNS, "attention_mask", "position_ids"):
        if col not in row or row[col] is None:
            continue
        v = _as_int_list(row[col])
        if v is not None and v and isinstance(v[0], list) and len(v) == 1:
            v = v[0]
        if v is None:
            return fail(f"{col} is a {type(row[col]).__name__}, not a list", f"/{col}")
        if len(v) != len(ids):
            return fail(f"{col} has {len(v)} values for {len(ids)} input_ids: labels and masks must be aligned "
                        "with the ids", f"/{col}")
        for k, t in enumerate(v):
            if isinstance(t, bool):
                v[k] = int(t)
            elif not isinstance(t, int):
                return fail(f"{col}[{k}] is {t!r}, not an integer", f"/{col}/{k}")
        out[col] = v
    labels = out.get("labels")
    if labels is not None:
        wrong = [k for k, (lab, t) in enumerate(zip(labels, ids)) if lab != IGNORE and lab != t]
        if wrong:
            k = wrong[0]
            shifted = all(labels[j] == ids[j + 1] for j in wrong if j + 1 < len(ids))
            return fail(f"labels[{k}] = {labels[k]} but input_ids[{k}] = {ids[k]} ({len(wrong)} trained labels differ "
                        "from the id at their position" + ("; the labels are shifted by one — transformers "
                                                          "shifts them itself" if shifted else "") + ")",
                        f"/labels/{k}")
    return out, []


def actual_mask(cols: Mapping[str, list[int]]) -> tuple[list[bool], str]:
    """Which tokens the row trains, and from what: labels != -100, else the AND of the mask columns, else every
    token (what trainers do without labels or masks)."""
    ids = cols["input_ids"]
    if "labels" in cols:
        return [lab != IGNORE for lab in cols["labels"]], "labels"
    masks = [cols[c] for c in MASK_COLUMNS if c in cols]
    if masks:
        return [all(m[k] for m in masks) for k in range(len(ids))], "+".join(c for c in MASK_COLUMNS if c in cols)
    return [True] * len(ids), "input_ids (no labels or masks: every token is trained)"


def _list(ks: Sequence[int], most: int = 8) -> str:
    return "tokens " + ", ".join(map(str, ks[:most])) + (" …" if len(ks) > most else "")


def _region_name(region: str) -> str:
    role, _, part = region.partition(":")
    if role == "padding":
        return "padding"
    if role == "template":
        return "template text (BOS, preamble, text between turns)"
    if role == "assistant" and part == "content":
        return "an assistant answer not chosen for training"
    return f"{'an' if role[:1] in 'aeio' else 'a'} {role} turn's {part}"


def _span(a: int, b: int) -> str:
    return f"token {a}" if b - a <= 1 else f"tokens {a}..{b - 1}"


def audit_row(row: Mapping[str, Any], st: Structure, *, index: int, path: str = "", line: int | None = None,
              train_on: str = DEFAULT_TRAIN_ON) -> RowAudit | list[Finding]:
    """Audit one row; a :class:`RowAudit` (findings in ``.findings``), or the row's L012 findings when it cannot
    be read."""
    train_on = valid_train_on(train_on)
    cols, bad = read_row(row, st, index=index, path=path, line=line)
    if cols is None:
        return bad
    loc = _where(path, index, line)
    ids = cols["input_ids"]
    n = len(ids)
    pads = [m == 0 for m in cols["attention_mask"]] if "attention_mask" in cols else [False] * n
    actual, source = actual_mask(cols)
    turns, conv_starts = recover_turns(ids, pads, st, cols.get("position_ids"))
    fs: list[Finding] = []

    def add(code: str, msg: str, a: int | None = None, b: int | None = None, **data) -> None:
        col = "labels" if "labels" in cols else source.split("+")[0].split(" ")[0]
        ptr = f"/{col}/{a}" if a is not None else ""
        d = {"row": index, **data}
        if a is not None:
            d["tokens"] = [a, b if b is not None else a + 1]
        fs.append(finding(code, f"row {index}: {msg}", pointer=ptr, data=d, **loc))

    # which assistant turns train, per conversation
    for c in range(len(conv_starts)):
        conv_turns = [t for t in turns if t.conv == c]
        chosen = trained_turns([{"role": t.role} for t in conv_turns], train_on)
        for k, t in enumerate(conv_turns):
            t.trained = k in chosen
    expected: list[bool | None] = [False] * n
    regions = ["template"] * n
    for t in turns:
        for k in range(t.start, min(t.content, n)):
            regions[k] = f"{t.role}:header"
        for k in range(t.content, min(t.end, n)):
            regions[k] = f"{t.role}:content"
        for k in range(t.end, min(t.eot_end, n)):
            regions[k] = f"{t.role}:end-of-turn"
        if t.trained:
            for k in range(t.content, min(t.eot_end, n)):
                expected[k] = True
    for t in turns:   # a token that joins the header's last bytes and the answer's first may go either way
        if t.trained and t.straddle and t.content < n:
            expected[t.content] = None
    for k in range(n):
        if pads[k]:
            regions[k] = "padding"
            expected[k] = False

    real = [k for k in range(n) if not pads[k]]
    # --- bad structure ---------------------------------------------------------------------------------------
    # double BOS at a conversation's start
    if st.bos_id is not None:
        k = 0
        while k < n - 1:
            if ids[k] == st.bos_id and ids[k + 1] == st.bos_id and not pads[k] and not pads[k + 1]:
                j = k
                while j < n and ids[j] == st.bos_id:
                    j += 1
                add("L008", f"{_span(k, j)} are {j - k} BOS tokens in a row (the template writes BOS and the "
                    "tokenizer added another: encode the render with add_special_tokens=False)", k, j)
                k = j
            else:
                k += 1
    assistants = [t for t in turns if t.role == "assistant"]
    if real and not assistants:
        add("L013", f"no assistant header of the template was found in the row's {len(real)} tokens (another "
            "template or tokenizer made this dataset?); nothing else is checked in this row")
        ra = RowAudit(ids=ids, actual=actual, expected=[None] * n, pads=pads, turns=turns, regions=regions,
                      findings=fs)
        ra.pad_id = st.pad_id     # type: ignore[attr-defined]
        return ra
    trained_any = any(a for a, p in zip(actual, pads) if not p)
    if real and not trained_any:
        add("L004", f"no token is trained ({source} masks all {len(real)} tokens"
            + (f"; {len(assistants)} assistant turn(s) are in the row" if assistants else "") + ")")
    # --- packing ---------------------------------------------------------------------------------------------
    if len(conv_starts) > 1:
        pos_ids = cols.get("position_ids")
        for c in conv_starts[1:]:
            if actual[c]:
                add("L010", f"token {c} (the first token of packed conversation {conv_starts.index(c)}) is trained: "
                    "the model learns to predict it from the previous conversation", c, c + 1)
            if pos_ids is not None and pos_ids[c] != 0:
                add("L010", f"position_ids[{c}] = {pos_ids[c]} at the start of packed conversation "
                    f"{conv_starts.index(c)}: positions do not restart, attention runs across conversations",
                    c, c + 1)
        if pos_ids is None and not any(f.code == "L010" for f in fs):
            add("L011", f"the row packs {len(conv_starts)} conversations (starting at tokens "
                f"{', '.join(map(str, conv_starts))}) without position_ids")
    # --- per turn --------------------------------------------------------------------------------------------
    pad_id = st.pad_id
    if any(pads):
        from collections import Counter

        pad_id = Counter(ids[k] for k in range(n) if pads[k]).most_common(1)[0][0]
    if trained_any:
        last_by_conv: dict[int, Turn] = {}
        for t in assistants:
            if t.trained:
                last_by_conv[t.conv] = t
        earlier_masked = [t for t in assistants if t.trained and last_by_conv.get(t.conv) is not t
                          and t.end > t.content and not any(actual[t.content:t.end])]
        last_trained = any(any(actual[t.content:t.end]) for t in last_by_conv.values())
        only_last = bool(earlier_masked) and last_trained
        if only_last:
            for t in earlier_masked:
                add("L005", f"assistant turn at {_span(t.content, t.end)} (not the conversation's last) is masked "
                    "while the last assistant turn is trained", t.content, t.end)
        eot_masked: list[int] = []
        for t in assistants:
            if not t.trained:
                continue
            if not (only_last and t in earlier_masked):
                miss = [k for k in range(t.content, min(t.end, n)) if expected[k] and not actual[k]]
                if miss:
                    a, b = miss[0], miss[-1] + 1
                    add("L002", f"{len(miss)} of {t.end - t.content} content tokens of the assistant turn at "
                        f"{_span(t.content, t.end)} are masked (first at token {a})", a, b, masked=len(miss))
            if t.has_eot:
                miss = [k for k in range(t.end, min(t.eot_end, n)) if not actual[k]]
                if miss and not (only_last and t in earlier_masked):
                    eot_masked.append(miss[0])
            else:
                tail = [k for k in range(t.eot_end, n) if not pads[k]]
                nxt = [u for u in turns if u.start >= t.eot_end and u.conv == t.conv]
                if not tail and not nxt:
                    add("L009", f"the row ends inside the assistant turn at {_span(t.content, t.end)}: its "
                        "end-of-turn was cut off (truncated)", t.content, t.end)
        by_pad = [k for k in eot_masked if any(pads) and ids[k] == pad_id]
        other = [k for k in eot_masked if k not in by_pad]
        if by_pad:
            add("L006", f"{len(by_pad)} end-of-turn token(s) (id {pad_id}, at {_list(by_pad)}) are masked and that "
                "id is the pad id: the collator masks padding by id, so every end-of-turn is masked",
                by_pad[0], by_pad[0] + 1, positions=by_pad)
        if other:
            add("L003", f"{len(other)} end-of-turn token(s) of trained assistant turns are masked (at "
                f"{_list(other)}, id {ids[other[0]]})", other[0], other[0] + 1, positions=other,
                eot_id=ids[other[0]])
    # trained tokens outside what is expected: one finding per row, naming the regions and the first run
    runs: list[tuple[int, int, str]] = []
    k = 0
    while k < n:
        if actual[k] and expected[k] is False:
            j = k
            while j < n and actual[j] and expected[j] is False and regions[j] == regions[k]:
                j += 1
            if not (len(conv_starts) > 1 and k in conv_starts[1:] and j == k + 1):   # reported as L010
                runs.append((k, j, regions[k]))
            k = j
        else:
            k += 1
    runs, benign = _split_conventional(runs, ids, turns, st)
    if runs:
        total = sum(b - a for a, b, _ in runs)
        names: list[str] = []
        for _a, _b, r in runs:
            nm = _region_name(r)
            if nm not in names:
                names.append(nm)
        a, b, r = runs[0]
        add("L001", f"{total} token(s) outside the trained assistant answers are trained: {', '.join(names[:6])}"
            f"{' …' if len(names) > 6 else ''} (first: {_span(a, b)}, {_region_name(r)})", a, b,
            runs=[[x, y, z] for x, y, z in runs[:32]], trained_outside=total)
    ra = RowAudit(ids=ids, actual=actual, expected=expected, pads=pads, turns=turns, regions=regions, findings=fs,
                  conventional=benign)
    ra.pad_id = pad_id            # type: ignore[attr-defined]
    return ra


def _split_conventional(runs: list[tuple[int, int, str]], ids: Sequence[int], turns: Sequence[Turn],
                        st: Structure) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """Trained runs outside the answers that are documented conventions rather than bugs (the gate's M023): the
    whitespace a template writes right after a trained end-of-turn (ChatML's ``\n`` after ``<|im_end|>``) or an
    end-of-sequence token there (Phi-3's ``<|endoftext|>``), and the whitespace that ends the generation prompt
    right before a trained answer (TRL's Qwen2.5 training template marks the ``\n`` after
    ``<|im_start|>assistant``). ``(bugs, conventions)``."""
    tb = st.token_bytes
    after_eot = {t.eot_end for t in turns if t.trained and t.has_eot}
    before_content = {t.content for t in turns if t.trained}
    bugs, conv = [], []
    for a, b, region in runs:
        blank = all(not tb(ids[k]).strip() for k in range(a, b))
        eos = all(ids[k] in st.stop_ids for k in range(a, b))
        if (region == "template" or region.endswith(":header")) and a in after_eot and (blank or eos):
            conv.append((a, b, region))
        elif region == "assistant:header" and b in before_content and blank:
            conv.append((a, b, region))
        else:
            bugs.append((a, b, region))
    return bugs, conv


# --------------------------------------------------------------------------------------------------------------
# a dataset
# --------------------------------------------------------------------------------------------------------------

@dataclass
class AuditSummary:
    rows: int = 0
    rows_with_errors: int = 0
    trained_tokens: int = 0
    tokens: int = 0
    pad_stop: tuple[int, int] | None = None    # (pad id, first row) when pads use a stop id


def audit_rows(rows: Iterable[tuple[int, int | None, Mapping[str, Any]]], st: Structure, *, path: str = "",
               train_on: str = DEFAULT_TRAIN_ON) -> tuple[list[Finding], dict]:
    """Audit ``(index, line, row)`` triples; the findings and a gate-style summary dict."""
    from tmplcheck import __version__
    from tmplcheck.validator.findings import Severity

    fs: list[Finding] = []
    summ = AuditSummary()
    pad_stop_l006 = False
    conv_rows, conv_first = 0, None
    for index, line, row in rows:
        summ.rows += 1
        res = audit_row(row, st, index=index, path=path, line=line, train_on=train_on)
        got = res if isinstance(res, list) else res.findings
        if not isinstance(res, list):
            real = [a for a, p in zip(res.actual, res.pads) if not p]
            summ.tokens += len(real)
            summ.trained_tokens += sum(real)
            pid = getattr(res, "pad_id", None)
            if any(res.pads) and pid in st.stop_ids and summ.pad_stop is None:
                summ.pad_stop = (pid, index)
        if not isinstance(res, list) and res.conventional:
            conv_rows += 1
            if conv_first is None:
                conv_first = (index, line, res.conventional[0], len(res.conventional))
        if any(f.code == "L006" for f in got):
            pad_stop_l006 = True
        if any(f.severity is Severity.ERROR for f in got):
            summ.rows_with_errors += 1
        fs.extend(got)
    if summ.pad_stop is not None:
        # a row without padding cannot tell that its masked end-of-turn id is the pad id; the dataset's can
        pid = summ.pad_stop[0]
        for k, f in enumerate(fs):
            if f.code == "L003" and f.data.get("eot_id") == pid:
                pos = f.data.get("positions", [])
                fs[k] = finding("L006", f"row {f.data['row']}: {len(pos)} end-of-turn token(s) (id {pid}, at "
                                f"{_list(pos)}) are masked and that id is the pad id of this dataset: the collator "
                                "masks padding by id, so every end-of-turn is masked", path=f.path, line=f.line,
                                pointer=f.pointer, data=f.data)
                pad_stop_l006 = True
    if summ.pad_stop is not None and not pad_stop_l006:
        pid, first = summ.pad_stop
        fs.append(finding("L007", f"padding positions hold id {pid}, a stop id (end-of-turn / eos) of this "
                          f"tokenizer (first in row {first}); no end-of-turn was masked by it here",
                          path=path, data={"row": first, "pad_id": pid}))
    if conv_first is not None:
        index, line, (a, b, region), n_runs = conv_first
        fs.append(finding("L014", f"{conv_rows} row(s) train template text next to the answers by a documented "
                          f"convention (first: row {index}, {_span(a, b)}, {_region_name(region)})",
                          path=path, pointer=f"/labels/{a}", data={"row": index, "tokens": [a, b], "rows": conv_rows}))
    if summ.rows == 0:
        fs.append(finding("L012", "the tokenized dataset holds no rows", path=path))
    fs.sort(key=lambda f: (f.data.get("row", -1) if f.data else -1, f.data.get("tokens", [0])[0]
                           if f.data else 0, f.code))
    by_sev: dict[str, int] = {}
    by_code: dict[str, int] = {}
    for f in fs:
        by_sev[f.severity.value] = by_sev.get(f.severity.value, 0) + 1
        by_code[f.code] = by_code.get(f.code, 0) + 1
    share = f"{summ.trained_tokens}/{summ.tokens} tokens trained" if summ.tokens else "no tokens"
    summary = {
        "path": path, "tmplcheck_version": __version__, "rows": summ.rows, "rows_with_errors": summ.rows_with_errors,
        "errors": by_sev.get("error", 0), "warnings": by_sev.get("warning", 0), "infos": by_sev.get("info", 0),
        "by_code": dict(sorted(by_code.items())), "passed": by_sev.get("error", 0) == 0,
        "audit": {"headline": f"{share}; train_on {train_on}", "trained_tokens": summ.trained_tokens,
                  "tokens": summ.tokens, "train_on": train_on},
    }
    return fs, summary


def batch_rows(batch: Mapping[str, Any], *, offset: int = 0) -> Iterator[tuple[int, None, dict]]:
    """A collated batch (``{"input_ids": [[...], ...], "labels": ...}``, tensors or lists) as rows."""
    cols = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in batch.items()
            if k in ("input_ids", "labels", "attention_mask", "position_ids", *MASK_COLUMNS)}
    ids = cols.get("input_ids")
    if not isinstance(ids, list):
        yield offset, None, {}
        return
    for r in range(len(ids)):
        yield offset + r, None, {k: v[r] for k, v in cols.items() if isinstance(v, list) and r < len(v)}
