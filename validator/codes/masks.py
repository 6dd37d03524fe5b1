"""M codes: which tokens a training run would learn from (the assistant mask)."""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "M"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("M001", "trained-outside-assistant", E, "The mask trains tokens of a system, user or tool turn, or of a header.",
         """
What: tokens outside the assistant turns' content and end-of-turn would be trained (label != -100). The message
names the first such token and the message or header it belongs to.
Why it hurts: the model learns to write user prompts and role headers; it starts answering its own questions.
Example: a `{% generation %}` block that opens before `<|im_start|>assistant\\n`, so the header is trained.
Fix: move the generation markers (or the masking code) so that only the assistant content and its end-of-turn are
inside.
""", "tokens/generation_header_trained.jsonl"),
    Rule("M002", "assistant-content-masked", E, "Tokens of an assistant turn's content are not trained.",
         """
What: part of an assistant answer is masked (label -100), so the model never learns it.
Why it hurts: silently less training signal; with a misplaced mask the model learns only the end of answers.
Fix: make the mask cover each assistant turn's content in full.
""", "tokens/generation_header_trained.jsonl"),
    Rule("M003", "end-of-turn-not-trained", E, "An assistant turn's end-of-turn token is masked.",
         """
What: the end-of-turn token after an assistant answer has label -100.
Why it hurts: the model never learns to emit it, so it never stops (trl's `is_chat_template_stop_token_trained`
catches the same bug). Common with `{% generation %}` blocks that close before `<|im_end|>`.
Fix: put the end-of-turn string inside the generation block / the trained span.
""", "tokens/generation_eot_masked.jsonl"),
    Rule("M004", "no-trained-tokens", E, "No token of the row would be trained.",
         """
What: the assistant mask is empty for the whole row (no assistant turn, or every assistant turn was cut away).
Why it hurts: the row costs compute and trains nothing; with some trainers the loss is NaN (0/0).
Fix: drop the row or add the assistant turn.
""", "tokens/no_trained_tokens.jsonl"),
    Rule("M005", "mask-boundary-merge", W, "A token joins template text and assistant content, so the mask cannot split them.",
         """
What: BPE merged non-whitespace template text (the end of a plain-text header such as `Assistant:`, or text after
the answer) with the content of an assistant turn into one token: either the template text is trained or part of
the answer is masked.
Why it hurts: the mask boundary shifts; the model learns to produce a token that at inference would already be part
of the prompt (see K009), or loses the first/last piece of its answer.
Example: a template writing `Assistant:` directly before content ":) Sure" merges `::`.
Fix: put whitespace or a special token between header and content in the template, or strip such content.
""", "tokens/mask_boundary_merge.jsonl"),
    Rule("M006", "generation-mask-mismatch", E, "The template's {% generation %} mask disagrees with the turn structure.",
         """
What: the template has `{% generation %}` markers (used by trl's `assistant_only_loss` and transformers'
`return_assistant_tokens_mask`), and the characters they mark differ from the assistant content plus end-of-turn
found from the render structure. The message gives the first differing position. Reported once per file; each row's
differences are also given under the code the labels would get (M001 template text marked, M002 assistant output
unmarked, M003 an end-of-turn unmarked), with the source "generation markers".
Why it hurts: trainers that trust the markers train other tokens than tmplcheck's verified mask.
Fix: fix the markers (or train with tmplcheck's labels, which come from the structure).
""", "tokens/generation_header_trained.jsonl", per_file=True),
    Rule("M020", "history-rewritten", W, "An assistant turn renders otherwise once later turns follow.",
         """
What: the template rewrites earlier assistant turns when the conversation goes on — most often it drops their
reasoning (Qwen3, DeepSeek-R1 and QwQ keep `<think>...</think>` only on turns after the last user message). The
turn as the model generates it (the last turn of a prefix of the row) differs from the turn inside the row. The
message gives the reasoning tokens lost (or both texts); the mask trains what the row holds, located from the
inference prompt, never by searching for content.
Why it hurts: a multi-turn reasoning row teaches reasoning only on its last turn; earlier turns train answers
without reasoning, which the model never produces at inference.
Example: Qwen3, a row `user, assistant(reasoning_content=...), user, assistant(reasoning_content=...)`: only the
last answer's reasoning is in the training text.
Fix: split multi-turn reasoning rows into one row per assistant turn (each ending with that turn), or accept the
loss knowingly.
""", "tokens/history_rewritten.jsonl"),
    Rule("M021", "empty-reasoning-trained", W, "An empty reasoning block the template inserts is trained.",
         """
What: the assistant turn has no reasoning, and the template writes an empty `<think>\n\n</think>\n\n` into it
(Qwen3 does for the last turn), after the inference prompt: it is part of what the model is trained to generate.
Why it hurts: the model learns to open and close its reasoning without thinking on prompts like this row's.
Fix: give the row reasoning, or render the row (and serve) with `enable_thinking=false`, where the empty block
belongs to the prompt and is not trained.
""", "tokens/empty_reasoning_trained.jsonl"),
    Rule("M022", "prompt-setting-mismatch", E,
         "The inference prompt is not a prefix of the training row under the template arguments given.",
         """
What: `render(messages[:i], add_generation_prompt=True)` — the prompt a server sends before assistant message i —
is not the start of the training row, because a template argument changes the assistant header (Qwen3 with
`enable_thinking=false` writes `<think>\n\n</think>\n\n` into the prompt, while a row with reasoning writes
`<think>\nreasoning...`), and another value of a template argument makes them agree; the message names it.
(When no value does, the template itself renders history otherwise than it prompts: that is K011.)
Why it hurts: the model is trained to continue a header it never sees at inference.
Fix: render the data with the setting you will serve with (`--template-kwargs` or the row's
`chat_template_kwargs`), or drop the reasoning from rows served without it.
""", "tokens/prompt_setting_mismatch.jsonl"),
    Rule("M023", "generation-mask-trains-more", I,
         "The template's {% generation %} mask trains tokens that tmplcheck's mask leaves out by a documented "
         "decision.",
         """
What: the template carries `{% generation %}` markers (TRL's `*_training.jinja` templates, used with
`assistant_only_loss=True`) that mark more than what the assistant generates, in one of three documented ways:
- template text after the end-of-turn token (ChatML's `\n` after `<|im_end|>`, Phi-3's `\n` after `<|end|>`);
- an end-of-sequence token after the last end-of-turn token (Phi-3's `<|endoftext|>`);
- text the generation prompt already holds (Qwen2.5's `\n` after `<|im_start|>assistant`, Qwen3.5's `<think>\n`),
  short of the turn-opening header itself (markers around `<|im_start|>assistant` or GPT-OSS's `<|start|>assistant`
  teach the model to open its own turn: that is M006).
tmplcheck trains none of these: generation stops at the end-of-turn token, and the server sends the generation
prompt, so the model never writes any of them. The message counts each kind. Anything else the two masks
disagree on is M006 (an error).
Why it hurts: little in practice (the model learns to predict a newline or an opener it is never asked for), but
the two pipelines train different tokens, and a report of which tokens is better than a silent difference.
Fix: nothing needed when you train with tmplcheck's labels; to make TRL's `assistant_only_loss` agree, end the
`{% generation %}` block right after the end-of-turn token and start it after the generation prompt.
""", "tokens/generation_mask_trains_more.jsonl", per_file=True),
]
