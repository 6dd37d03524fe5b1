"""The gate's token stage: the token pipeline (``validator/token_pipeline.py``) over every row, in chunks.

``RowPipeline`` is the stage's chunk worker: it runs the template stage's per-row work (when attached) and the token
pipeline on each chunk, in sub-batches, the Rust tokenizer encoding one sub-batch in a helper thread while this
thread renders and checks its neighbours; it runs in the gate's process or in worker processes alike.
``TokenStage.take`` collects the findings and statistics in row order and runs the llama.cpp id comparison (K010)
in the gate's process. ``resolve_template`` picks the template a tokenizer is checked with.
"""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from tmplcheck.validator.findings import Finding
from tmplcheck.validator.template_stage import TemplateRowOut
from tmplcheck.validator.token_pipeline import RowOut, TokenPipeline, _Prepared, row_in


class RowPipeline:
    """The token stage's chunk worker: the token pipeline plus, when the template stage is attached, its per-row
    work, one pass per chunk: each row is rendered once (by the template checks) and the token pipeline encodes that
    render. Per readable usable row with messages the payload is ``(RowOut, TemplateRowOut | None)``; ``None`` for
    the other rows. Runs in the gate's process or in workers."""

    def __init__(self, tokens: TokenPipeline, checker=None, *, share_renders: bool = False):
        self.tokens = tokens
        self.checker = checker
        self.share_renders = share_renders

    #: rows per sub-batch of a chunk: the tokenizer encodes one sub-batch in a helper thread while this thread
    #: renders the next and checks the previous one
    sub_batch = 64

    def process(self, convs: Sequence[Any], ordinals: Sequence[int]) -> list[tuple | None]:
        """The chunk in sub-batches, pipelined: while the Rust tokenizer encodes sub-batch k in a helper thread (it
        releases the GIL and uses its own thread pool), this thread renders and locates sub-batch k+1 and then
        checks sub-batch k. Results are those of the plain sequence (each step sees the same data)."""
        picked = [k for k, conv in enumerate(convs) if conv is not None and conv.usable and conv.messages]
        out: list[tuple | None] = [None] * len(convs)
        pending = None
        for lo in range(0, len(picked), self.sub_batch):
            part = picked[lo:lo + self.sub_batch]
            touts = []
            texts = []
            places = []
            for k in part:
                t = self.checker.check(convs[k]) if self.checker is not None else None
                touts.append(t)
                shared = t is not None and self.share_renders
                texts.append(t.text if shared else None)
                places.append(t.at if shared else None)
                if t is not None:
                    t.text = t.at = None  # not shipped back from a worker
            prep = self.tokens.prepare([row_in(convs[k]) for k in part], [ordinals[k] for k in part], texts, places)
            job = _tokenizing(self.tokens, prep)
            if pending is not None:
                self._finish(out, *pending)
            pending = (part, touts, prep, job)
        if pending is not None:
            self._finish(out, *pending)
        return out

    def _finish(self, out, part, touts, prep, job) -> None:
        for k, r, t in zip(part, self.tokens.finish(prep, job.result()), touts):
            if r.regular and not r.findings and r.llamacpp_input is None and (t is None or (
                    t.cross_shape and t.status == "rendered" and not t.findings and not t.undefined)):
                # a row with nothing to say but its counts: a plain tuple, and its shape's (shared) comparison,
                # which a chunk ships once (see ``TokenStage.take``)
                out[k] = (r.tokens, r.trained, r.sampled, None if t is None else t.filled,
                          None if t is None else t.cross)
            else:
                out[k] = (r, t)


_HELPER = None   # (pid, executor): the tokenizing helper thread of this process


class _Done:
    """A finished job (``_tokenizing``'s result when the encoding ran in this thread)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _tokenizing(tokens: TokenPipeline, prep: _Prepared):
    """Start ``tokens.tokenize(prep)`` in this process's helper thread; returns its future. When the ids are made in
    Python (``validator/pieces.py``, which holds the GIL) a helper thread would only take turns with this one: the
    encoding runs here and then."""
    global _HELPER
    from concurrent.futures import ThreadPoolExecutor

    pieces = getattr(tokens.tokenizer, "pieces", None)
    if pieces is not None and pieces() is not None:
        return _Done(tokens.tokenize(prep))
    if _HELPER is None or _HELPER[0] != os.getpid():   # none yet, or inherited through a fork (threads are not)
        _HELPER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="tmplcheck-tokenize"))
    return _HELPER[1].submit(tokens.tokenize, prep)


def can_share_renders(stage_template, token_template) -> bool:
    """Whether the token stage may encode the template stage's renders: same source and variables, and no clock in
    the template (the template stage pins it for the run)."""
    return (stage_template.source == token_template.source and stage_template.context == token_template.context
            and "strftime_now" not in stage_template.source)


# ------------------------------------------------------------------------------------------------------ statistics
class TokenStats:
    """Token-length distribution and per-check failed-row counts (mergeable across workers)."""

    def __init__(self) -> None:
        self.hist: Counter[int] = Counter()
        self.n = 0
        self.total = 0
        self.trained = 0
        self.min = math.inf
        self.max = 0
        self.zero_trained = 0
        self.unencoded = 0
        self.rows_failed: Counter[str] = Counter()

    def add_many(self, tokens: Sequence[int], trained: Sequence[int]) -> None:
        """Encoded rows without findings: ``tokens[k]`` tokens of which ``trained[k]`` trained (lists), added as
        column sums."""
        if not tokens:
            return
        self.n += len(tokens)
        self.total += sum(tokens)
        self.trained += sum(trained)
        lo, hi = min(tokens), max(tokens)
        if lo < self.min:
            self.min = lo
        if hi > self.max:
            self.max = hi
        hist = self.hist
        for b, c in Counter(map(int.bit_length, tokens)).items():
            hist[max(0, b - 1)] += c
        self.zero_trained += trained.count(0)

    def add(self, r: RowOut) -> None:
        if r.tokens < 0:
            self.unencoded += 1
            return
        self.add_many([int(r.tokens)], [r.trained])
        for code in {f.code for f in r.findings}:
            self.rows_failed[code] += 1

    def percentile(self, q: float) -> int:
        """Upper bound of the log2 bucket holding the q-quantile (exact min/max at the ends)."""
        if not self.n:
            return 0
        target = q * self.n
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen >= target:
                return min(int(self.max), (1 << (b + 1)) - 1)
        return int(self.max)

    def as_dict(self, max_length: int | None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rows_encoded": self.n, "rows_not_encoded": self.unencoded, "tokens": self.total,
            "trained_tokens": self.trained, "rows_without_trained_tokens": self.zero_trained,
            "length": {"min": 0 if not self.n else int(self.min), "max": int(self.max),
                       "mean": round(self.total / self.n, 1) if self.n else 0,
                       "p50_le": self.percentile(0.5), "p90_le": self.percentile(0.9),
                       "p99_le": self.percentile(0.99),
                       "histogram_log2": {f"{1 << b}-{(1 << (b + 1)) - 1}": c for b, c in sorted(self.hist.items())}},
            "rows_failed_by_code": dict(sorted(self.rows_failed.items())),
        }
        if max_length:
            d["max_length"] = max_length
        return d


# ------------------------------------------------------------------------------------------------------- the stage
class TokenStage:
    """Gate stage (a split stage, see ``validator/gate.py``): its chunk worker encodes and checks the rows, its
    ``take`` collects findings and statistics in row order."""

    name = "tokens"

    def __init__(self, path: str, template, tokenizer, *, max_length: int | None = None, jobs: int | None = None,
                 llamacpp_vocab: str | None = None, template_name: str = "", tokenizer_name: str = "",
                 **pipeline_kw):
        self.path = path
        self.max_length = max_length
        self.pipeline = TokenPipeline(template, tokenizer, path=path, max_length=max_length,
                                      llamacpp_vocab=llamacpp_vocab, **pipeline_kw)
        self.jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        self.seen = 0
        self.stats = TokenStats()
        self.template_name = template_name or template.meta.name
        self.tokenizer_name = tokenizer_name or getattr(tokenizer, "name", "")
        self._lc_rows = 0
        self._prefix_rows = 0
        self._regular_rows = 0
        self._lc_pool = None
        self._lc_jobs: deque = deque()
        self._lc_started = False
        self.template_stage = None

    def attach(self, template_stage) -> None:
        """Run the template stage's per-row work inside this stage's chunk worker, rendering each row once for both
        stages. The template stage then only keeps its file-level state; its row results come back through this
        stage's ``take`` in row order."""
        self.template_stage = template_stage
        template_stage.attached = True

    # split stage
    def prepare(self) -> list[Finding]:
        return []

    def chunk_worker(self) -> RowPipeline:
        # the byte-length table is made once here, before any worker forks, not once per worker process (the
        # llama.cpp vocabulary is only needed in this process: see TokenPipeline.llamacpp_findings)
        if hasattr(self.pipeline.tokenizer, "_byte_table"):
            self.pipeline.tokenizer._byte_table()
            self.pipeline.tokenizer.pieces()   # proven once here, inherited by every worker
        from tmplcheck.validator.tokenizer import before_fork

        before_fork()   # no llama.cpp vocabulary still loading (``take`` starts it after the fork); the heap trimmed
        ts = self.template_stage
        if ts is None or ts._broken:
            return RowPipeline(self.pipeline)
        return RowPipeline(self.pipeline, ts.checker,
                           share_renders=can_share_renders(ts.template, self.pipeline.template))

    def take(self, info, payload: tuple | None) -> list[Finding]:
        if not self._lc_started:
            self._start_llamacpp()
        out: list[Finding] = []
        if payload is not None and len(payload) == 5:   # a clean regular row (``RowPipeline._finish``)
            tokens, trained, sampled, filled, cross = payload
            if self.template_stage is not None:
                out = self.template_stage.take_shape_row(info, filled, cross)
            return out + self._take_regular([tokens], [trained], [sampled])
        else:
            r, t = payload if payload is not None else (None, None)
        if self.template_stage is not None:
            out.extend(self.template_stage.take_row(info, t))
        if r is None:
            return out
        self.seen += 1
        self._lc_rows += r.sampled & 1
        self._prefix_rows += (r.sampled >> 1) & 1
        self._regular_rows += r.regular
        self.stats.add(r)
        out.extend(r.findings)
        if r.llamacpp_input is not None:
            self._compare_later(r)
        if self._lc_jobs:
            out.extend(self._compared())
        return out

    def take_clean(self, block, kind) -> tuple[list[Finding], list[tuple] | None]:
        """``take`` of each row of a ``CleanRows`` (``gate.py``): clean regular rows; each shape's rows to the
        template stage, whose shared comparison is to be located at them (``(findings, lines)`` a shape; the gate
        keeps file order where it matters, ``GateRun.add_shared``)."""
        if not self._lc_started:
            self._start_llamacpp()
        ts = self.template_stage
        shared = None
        if ts is not None:
            filled = None if block.filled_none else block.filled
            for cross, at in block.shapes():
                got = ts.take_shape_rows(block.lines if at is None else [block.lines[k] for k in at],
                                         filled if filled is None or at is None else [filled[k] for k in at], cross)
                if got is not None:
                    shared = shared or []
                    shared.append(got)
        return self._take_regular(block.tokens, block.trained, block.sampled), shared

    def _take_regular(self, tokens: Sequence[int], trained: Sequence[int], sampled: Sequence[int]) -> list[Finding]:
        """The counts of clean regular rows, as columns (tokens, trained tokens, sampled bits); the K010 findings
        of earlier rows that are ready."""
        self.stats.add_many(tokens, trained)
        n = len(tokens)
        self.seen += n
        self._regular_rows += n
        for bits, count in Counter(sampled).items():
            self._lc_rows += count * (bits & 1)
            self._prefix_rows += count * ((bits >> 1) & 1)
        return self._compared() if self._lc_jobs else []

    #: rows waiting for K010 at most: enough for the rows sampled while llama.cpp's vocabulary loads (the head's 256,
    #: then 1 in 50), so that the load does not hold up taking rows (and so the workers, 2 * jobs chunks ahead)
    _LC_IN_FLIGHT = 512

    def _start_llamacpp(self) -> None:
        """Start loading llama.cpp's vocabulary (K010) in a background thread, on the first row taken: by then the
        gate's workers have forked (no thread may be inside llama.cpp at a fork), and the load overlaps with their
        work instead of delaying it (llama.cpp releases the GIL while it reads the vocabulary)."""
        self._lc_started = True
        if self.pipeline.llamacpp_vocab and self.pipeline._lc is None:
            from tmplcheck.validator.tokenizer import prefetch_llama_cpp_tokenizer

            prefetch_llama_cpp_tokenizer(self.pipeline.llamacpp_vocab)

    def _compare_later(self, r: RowOut) -> None:
        """K010 for a row on the llama.cpp sample, in a helper thread of the gate's process: llama.cpp releases the
        GIL, so its vocabulary loads (on the first such row) and its tokenizer runs while this thread goes on taking
        rows. At most ``_LC_IN_FLIGHT`` rows wait; their findings come out of later ``take`` calls or ``finish``
        (the finding store sorts every finding by line)."""
        if self._lc_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._lc_pool = ThreadPoolExecutor(1, thread_name_prefix="tmplcheck-llamacpp")
        self._lc_jobs.append(self._lc_pool.submit(self.pipeline.llamacpp_findings, r))

    def _compared(self, wait: bool = False) -> list[Finding]:
        out: list[Finding] = []
        while self._lc_jobs and (wait or self._lc_jobs[0].done() or len(self._lc_jobs) > self._LC_IN_FLIGHT):
            found = self._lc_jobs.popleft().result()
            self.stats.rows_failed.update({f.code for f in found})
            out.extend(found)
        return out

    # Stage protocol
    def check(self, conv) -> list[Finding]:
        """One row, in this process (the gate uses ``chunk_worker``/``take``)."""
        from tmplcheck.validator.gate import RowInfo

        return self.take(RowInfo.of(conv), self.chunk_worker().process([conv], [self.seen])[0])

    def finish(self) -> list[Finding]:
        out = self._compared(wait=True)
        if self._lc_pool is not None:
            self._lc_pool.shutdown()
            self._lc_pool = None
        return out + self.pipeline.template_findings()

    def summary(self) -> dict[str, Any]:
        d = self.stats.as_dict(self.max_length)
        d["template"] = self.template_name
        d["tokenizer"] = self.tokenizer_name
        if self.pipeline.llamacpp_vocab:
            d["llamacpp_rows_compared"] = self._lc_rows
        d["prefix_rows_rendered"] = self._prefix_rows
        d["regular_rows"] = self._regular_rows
        p = self.pipeline
        d["sampling"] = {"head_rows": p.llamacpp_all, "then_one_in": p.llamacpp_every,
                         "prefix_head_rows": p.prefix_all, "prefix_then_one_in": p.prefix_every}
        if p.has_markers:
            # a separate {% generation %} training variant is rendered again on the sample; markers in the template
            # itself are checked on every row
            d["generation_markers"] = "every row" if p.markers_inline else \
                f"rows on the sample ({p.generation_all} first, then 1 in {p.generation_every})"
        s = self.stats
        failed = ", ".join(f"{c} {n}" for c, n in sorted(s.rows_failed.items(), key=lambda kv: -kv[1])[:6])
        d["headline"] = (f"tokens ({self.tokenizer_name}): {s.n} rows, {s.total} tokens "
                         f"(min {d['length']['min']}, mean {d['length']['mean']}, max {d['length']['max']}), "
                         f"{s.trained} trained" + (f"; rows failing: {failed}" if failed else "; every token check passed"))
        return d


def resolve_template(spec: str | None, tokenizer):
    """The template to check with: ``spec`` when given; else the chat template shipped with the tokenizer (its
    model directory's tokenizer_config.json / chat_template.jinja); else the registry template whose default
    tokenizer is this built-in tokenizer."""
    from tmplcheck.templates import load_template, registry

    cfg = getattr(tokenizer, "config", None) or {}
    if spec is not None:
        return load_template(spec, tokenizer_config=cfg or None)
    hf_dir = getattr(tokenizer, "hf_dir", None)
    if cfg.get("chat_template") or (hf_dir is not None and (hf_dir / "chat_template.jinja").is_file()):
        return load_template(str(hf_dir), tokenizer_config=cfg)
    name = getattr(tokenizer, "name", "")
    for tname, meta in registry().items():
        if meta.default_tokenizer and meta.default_tokenizer == name:
            return load_template(tname)
    raise ValueError(f"tokenizer {name!r} has no chat template and no built-in template names it as its default: "
                     "pass --template")
