"""L codes: what a tokenized dataset or a trainer's batch actually trains (``tmplcheck audit``, ``AuditCallback``).

The M codes say what tmplcheck's own labels would train; the L codes audit labels made by someone else's pipeline
(TRL's ``assistant_only_loss`` / ``completion_only_loss``, Unsloth's ``train_on_responses_only``, a collator,
axolotl's masking) from the ids and labels alone, with the turns recovered from the template's structure.
"""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "L"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("L001", "label-outside-assistant", E, "A token outside the assistant turns is trained (label != -100).",
         """
What: a token of a system, user or tool turn, of a role header, of the template's own text (BOS, a preamble, the
newline after an end-of-turn) or a padding position has a label. The message names the turn, its role and the
token range.
Why it hurts: the model learns to write prompts and headers (it starts answering its own questions) or to predict
padding; with a full-sequence collator most of the loss is spent on text the model never has to produce.
Example: `transformers.DataCollatorForLanguageModeling(mlm=False)` copies every input id into the labels.
Fix: mask everything but the assistant answers and their end-of-turn (trl `assistant_only_loss=True` with a
template that has `{% generation %}` markers, `completion_only_loss`, Unsloth `train_on_responses_only`).
""", "audit/outside_assistant.jsonl"),
    Rule("L002", "label-assistant-masked", E, "Tokens of an assistant answer that should be trained are masked.",
         """
What: part (or all) of an assistant turn's content has label -100 while the rest of the row trains.
Why it hurts: silently less signal; with a mask that starts late the model learns only the ends of answers.
Example: a response template found one token too late, a mask built from a prompt whose tokens differ from the
start of the full row.
Fix: make the mask cover each assistant answer in full.
""", "audit/assistant_masked.jsonl"),
    Rule("L003", "label-end-of-turn-masked", E, "An assistant turn's end-of-turn token is not trained.",
         """
What: the token that closes an assistant answer (`<|eot_id|>`, `<|im_end|>`, ...) has label -100.
Why it hurts: the model never learns to stop; the loss looks healthy and the problem shows only at inference as
run-on answers that continue with the next role header.
Fix: include the end-of-turn in the trained span (inside `{% generation %}`, or after the response in the mask).
""", "audit/end_of_turn_masked.jsonl"),
    Rule("L004", "label-row-untrained", E, "No token of the row is trained.",
         """
What: every label of the row is -100 (or every assistant mask bit is 0).
Why it hurts: the row costs compute and teaches nothing; when a whole batch is like this the loss is NaN or 0.
Examples: a response template that tokenizes differently inside the row than on its own is never found, so the
collator masks everything; `return_assistant_tokens_mask` on a template without `{% generation %}` markers gives
an all-zero `assistant_masks`.
Fix: tokenize the response template the way it appears in context (or pass its ids), or use a template with
generation markers; check the first batch with `tmplcheck audit` / `AuditCallback`.
""", "audit/row_untrained.jsonl"),
    Rule("L005", "label-only-last-turn", E, "Only the last assistant turn of a multi-turn row is trained.",
         """
What: the earlier assistant answers of the conversation are masked, the last one is trained.
Why it hurts: most of a multi-turn dataset's answers never train; the model learns only final answers. Under
`--train-on last-assistant` this is what was asked for and not reported.
Example: Unsloth `train_on_responses_only(..., last_response_only=True)`, or a prompt/completion split that puts
the whole history into the prompt.
Fix: train every assistant turn (or say `--train-on last-assistant` when that is intended).
""", "audit/only_last_turn.jsonl"),
    Rule("L006", "label-pad-masks-end-of-turn", E, "The pad id is the end-of-turn id and the collator masked it.",
         """
What: padding uses the same id as the assistant's end-of-turn (pad = eos), and the labels mask that id
everywhere, so every end-of-turn inside the answers is masked together with the padding.
Why it hurts: the model never learns to stop (like L003), on every row.
Example: `tokenizer.pad_token = tokenizer.eos_token` with `transformers.DataCollatorForLanguageModeling(mlm=False)`,
which sets `labels[labels == pad_token_id] = -100`.
Fix: give the tokenizer a pad token that is not a stop token (Llama 3: `<|finetune_right_pad_id|>`), or use a
collator that masks padding by position (trl's `DataCollatorForLanguageModeling` pads labels with -100).
""", "audit/pad_masks_end_of_turn.jsonl"),
    Rule("L007", "label-pad-is-stop-id", W, "The pad id is a stop id of the model.",
         """
What: the padding positions (attention mask 0) hold an id that is also an end-of-turn or end-of-sequence id.
No end-of-turn inside the answers was masked because of it here (that is L006), but any collator or loss that masks
by id instead of by position will, and a generation that pads with it can look like it stopped.
Fix: use a dedicated pad token.
""", "audit/pad_is_stop_id.jsonl"),
    Rule("L008", "label-double-bos", E, "A conversation starts with two BOS tokens.",
         """
What: the template writes BOS and the tokenizer added another one (`tokenizer(text)` on a rendered chat with
`add_special_tokens=True`).
Why it hurts: the model trains on an input it never sees at inference; some models degrade markedly.
Fix: encode the render with `add_special_tokens=False` (what `apply_chat_template(tokenize=True)` does).
""", "audit/double_bos.jsonl"),
    Rule("L009", "label-truncated-turn", E, "The row ends inside an assistant turn: its end-of-turn was cut off.",
         """
What: the row was truncated (trl `max_length`, a tokenizer's `truncation=True`) before the last assistant turn's
end-of-turn, so the answer is trained without its end.
Why it hurts: the model learns answers that never end (and, on long rows, to stop mid-sentence is never taught).
Fix: raise `max_length`, drop or split rows longer than it (`tmplcheck check --max-length` finds them first).
""", "audit/truncated_turn.jsonl"),
    Rule("L010", "label-packed-leak", E, "A packed row's conversations are not kept apart.",
         """
What: the row holds several conversations (several BOS) and either its `position_ids` do not restart at a
conversation's first token, or that first token is trained (predicted from the end of the previous conversation).
Why it hurts: the model learns transitions between unrelated conversations and attends across them.
Fix: pack with boundaries (trl `padding_free=True` restarts position ids and masks the first token of each
sequence).
""", "audit/packed_leak.jsonl"),
    Rule("L011", "label-packed-no-boundaries", W, "A packed row has no position ids to separate its conversations.",
         """
What: the row holds several conversations but no `position_ids` (or `seq_lengths`) column, so attention runs
across their boundaries unless the trainer separates them in another way.
Fix: pack with position ids that restart per conversation, or do not pack.
""", "audit/packed_no_boundaries.jsonl"),
    Rule("L012", "label-bad-row", E, "A row of the tokenized dataset cannot be audited as it is.",
         """
What: the row has no `input_ids`, ids that are not integers or lie past the tokenizer's vocabulary, `labels` /
masks whose length differs from `input_ids`, or trained labels that are not the id at their position (labels
shifted by one, or taken from another tokenization). The message names the field and the position.
Why it hurts: the trainer crashes on it or silently trains on misaligned labels.
Fix: re-tokenize the row with the model's tokenizer; keep labels and masks aligned with the ids.
""", "audit/bad_rows.jsonl"),
    Rule("L013", "label-turns-not-found", E, "No turn of the template was found in the row's tokens.",
         """
What: the row's tokens hold none of the template's role headers / generation prompt, so no assistant turn can be
located: the dataset was made with another template (or another tokenizer) than the one given.
Fix: pass the template and tokenizer the pipeline used (`--template`, `--tokenizer`).
""", "audit/turns_not_found.jsonl"),
    Rule("L014", "label-conventional-extra", I,
         "Template text next to the answers is trained by a documented convention.",
         """
What: tokens that are not the answer but sit right next to it are trained, in one of the ways TRL's `*_training`
templates do on purpose (the gate reports the same decisions for templates as M023): whitespace the template writes
right after a trained end-of-turn (ChatML's `\n` after `<|im_end|>`), an end-of-sequence token there (Phi-3's
`<|endoftext|>`), or the whitespace that ends the generation prompt right before the answer (the `\n` after
`<|im_start|>assistant` in TRL's Qwen2.5 training template). Reported once per dataset with the number of rows.
Why it matters: harmless for stopping (the end-of-turn is trained), but the model also learns to write the text
after it, which the serving prompt never asks for; other template text trained is L001.
Fix: nothing required; to match tmplcheck's mask exactly, end the generation block at the end-of-turn.
""", "audit/conventional_extra.jsonl"),
]
