"""K codes: what the model will actually see once the render is tokenized."""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "K"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("K001", "special-token-not-single-id", E, "A special-token string the template writes is not one token id.",
         """
What: the template writes a control string (e.g. `<|eot_id|>`, `<|im_end|>`, `<start_of_turn>`) that this
tokenizer splits into several ordinary tokens instead of encoding it as its one reserved id. The message gives the
string and the ids it became.
Why it hurts: the model never sees the control token it will be asked to produce at inference; it learns to spell
`<`, `|`, `eot`, `_id`, `|`, `>` instead, and generation never hits the stop id. This happens when a template is
paired with another family's tokenizer (a ChatML template on the Llama 3 vocabulary) or when the token was never
added to the vocabulary.
Example: `--template chatml --tokenizer llama-3`: `<|im_start|>` becomes 6 ids.
Fix: use the template that belongs to the tokenizer, or add the strings as special tokens (and resize embeddings).
""", "tokens/special_not_single.jsonl", per_file=True),
    Rule("K002", "double-bos", E, "The encoded row starts with two BOS tokens.",
         """
What: the template writes the BOS string (`<|begin_of_text|>`, `<s>`, `<bos>`) and the tokenizer's post-processor
adds another when the text is encoded with special tokens.
Why it hurts: every training row starts with a sequence the model never sees at inference (where BOS is added once);
Llama 3's early fine-tunes had exactly this. Loss on the first tokens is wasted and the model drifts.
Example: a Llama 3 template with `{{ bos_token }}` encoded by Meta's tokenizer (which adds `<|begin_of_text|>`).
Fix: encode the rendered text with `add_special_tokens=False`, or drop `{{ bos_token }}` from the template — not both.
""", "tokens/double_bos.jsonl", per_file=True),
    Rule("K003", "missing-bos", E, "The encoded row does not start with the BOS token the model expects.",
         """
What: the tokenizer has a BOS token and the template family uses one, but neither the template nor the tokenizer's
post-processor put it at the start of the row.
Why it hurts: pretraining always started with BOS; a fine-tune without it trains on out-of-distribution positions
and the served model (which gets BOS from llama.cpp or the tokenizer) sees a different start than training did.
Example: rendering the Llama 3 template without `bos_token` and encoding with `add_special_tokens=False`.
Fix: let the tokenizer add BOS, or write `{{ bos_token }}` at the start of the template (once).
""", "tokens/missing_bos.jsonl", per_file=True),
    Rule("K004", "assistant-without-end-of-turn", E, "An assistant turn is not followed by its end-of-turn token.",
         """
What: after the content of an assistant turn there is no end-of-turn token (`<|eot_id|>`, `<|im_end|>`,
`<end_of_turn>`, `</s>`...) before the next turn or the end of the row.
Why it hurts: the model is trained on answers that never end; at inference it keeps generating, writes the next
user turn itself, or rambles until max_tokens — the "never stops" bug.
Example: a template that closes user turns with `<|eot_id|>` but forgets it after assistant content.
Fix: end every assistant turn with the end-of-turn string in the template.
""", "tokens/eot_missing.jsonl"),
    Rule("K005", "end-of-turn-not-a-stop-id", E, "The assistant end-of-turn token is not in the inference stop set.",
         """
What: the token that ends assistant turns in training is neither the tokenizer's eos token nor one of the
generation config's `eos_token_id`s, so generation does not stop when the model emits it.
Why it hurts: the model learns to stop correctly but the server keeps sampling after the end-of-turn token — the
answer runs on into an invented user turn. Llama 3 base (eos `<|end_of_text|>`) with the instruct template
(`<|eot_id|>`) is the classic case.
Fix: pass the model directory (with its generation_config.json) as `--tokenizer`, or set the generation config's
`eos_token_id` to include the end-of-turn id (tmplcheck's trainer writes every stop id there).
""", "tokens/eot_not_stop.jsonl", per_file=True),
    Rule("K006", "control-token-in-content", E, "Message content holds a control-token string that encodes as the real token.",
         """
What: a user (or assistant, system, tool) message contains the literal text of a special token such as
`<|eot_id|>`; encoding the rendered row turns it into the real control id. The message gives the offset and the ids
the text would have had if it were escaped (encoded as plain text).
Why it hurts: the row's structure changes — a user turn seems to end early, an assistant turn seems to stop mid-way;
prompt-injection data teaches the model that users can close turns.
Fix: remove the string, or escape it so it encodes as plain text (e.g. insert a zero-width joiner after `<|`, or
encode content with `split_special_tokens=True`).
""", "tokens/control_in_content.jsonl"),
    Rule("K007", "row-over-max-length", W, "The row has more tokens than --max-length.",
         """
What: the encoded row is longer than the given maximum sequence length; trainers truncate it (or drop it).
Why it hurts: the tail is lost; if an assistant turn straddles the cut it trains without its end (see K008).
Fix: raise the maximum length, split the conversation, or drop the row.
""", "tokens/over_max_length.jsonl"),
    Rule("K008", "truncation-cuts-end-of-turn", E, "Truncating at --max-length cuts an assistant turn before its end-of-turn.",
         """
What: the cut at `--max-length` falls inside an assistant turn (or between its content and its end-of-turn), so the
truncated row trains that answer without the token that ends it. The message names the turn.
Why it hurts: the model learns answers that stop mid-sentence without an end-of-turn, i.e. it is taught not to stop.
Fix: raise `--max-length`, drop or split the row, or truncate at turn boundaries.
""", "tokens/over_max_length.jsonl"),
    Rule("K009", "header-tokens-changed", W, "The generation prompt's last token merges with the answer in training.",
         """
What: BPE merged the end of the assistant header (the generation prompt, e.g. the `\n` after
`<|im_start|>assistant`) with the start of the answer (leading whitespace or newlines), so no token boundary exists
in the training row where the inference prompt ends.
Why it hurts: at inference the prompt is encoded on its own and ends with the header's own tokens; in training the
model never saw that context followed by an answer — it saw one merged token. The first generated token is
conditioned on a context it never saw, which shows up as a stray newline or a skipped first word.
Example: ChatML with assistant content "\nHello" gives the token `\n\n` spanning header and content.
Fix: strip leading whitespace from content (see D014).
""", "tokens/header_merge.jsonl"),
    Rule("K010", "llama-cpp-token-mismatch", W, "llama.cpp's tokenizer gives other ids than the HF tokenizer for the same text.",
         """
What: the rendered row was tokenized with the HF tokenizer (used for training) and with llama.cpp's own tokenizer
from the GGUF vocabulary (used for serving); the id sequences differ. The message gives the first divergence.
Why it hurts: the served model sees token sequences it was not trained on (llama.cpp has merged `\\n\\n` differently
from HF before); small differences around headers change behaviour noticeably.
Example: Llama 2's vocabulary as transformers' GGUF loader converts it adds no "▁" after `<s>`, so `<s>[INST]`
gives `[` (29961) where llama.cpp gives `▁[` (518).
Fix: usually an HF tokenizer converted differently from the GGUF (or an outdated GGUF); train with a tokenizer that
matches the serving vocabulary (tmplcheck's built-in conversions are verified against llama.cpp), or re-convert.
""", "tokens/llamacpp_mismatch.jsonl"),
    Rule("K011", "prefix-unstable", E, "The inference prompt is not a token prefix of the training row.",
         """
What: rendering the messages up to a user turn with the generation prompt (what the model sees when serving) does
not give a token prefix of the full training row: the template rewrites history (e.g. strips earlier reasoning,
adds a date only to the last turn) or the generation prompt differs from the trained assistant header.
Why it hurts: the model is trained on a context that never occurs at inference, so multi-turn answers are
conditioned on unseen prompts; the KV cache cannot be reused between turns either.
Example: a template that removes `<think>...</think>` from all but the last assistant turn.
Fix: train each turn with the history the server will send, or use a template that renders history unchanged.
""", "tokens/prefix_unstable.jsonl"),
    Rule("K012", "content-not-in-render", E, "A message's content does not appear in the rendered text as written.",
         """
What: the template changed the content (trimmed it, escaped it, dropped the message), so the content cannot be
found in the render at its turn.
Why it hurts: training sees other text than the dataset holds; trimming templates disagree with the serving side,
and a dropped message silently removes data.
Fix: fix the data (strip whitespace, see D014) or use a template that renders content verbatim.
""", "tokens/content_changed.jsonl"),
    Rule("K020", "bos-training-serving-mismatch", W,
         "Training rows have no BOS, and serving adds one: the tokenizer adds BOS the template does not write.",
         """
What: `apply_chat_template(tokenize=True)` — and so TRL, and `tmplcheck train` — encodes the render with
`add_special_tokens=False`: a row starts with BOS only when the template writes it. This template writes none, but
the tokenizer's post-processor adds one whenever text is encoded with special tokens (`tokenizer(prompt)`), and
llama.cpp adds it when the GGUF's `tokenizer.ggml.add_bos_token` is true (Phi-3, Llama 2 vocabularies).
Why it hurts: the model is trained on sequences that start with `<|user|>` and served sequences that start with
`<s><|user|>`: a shift in the first position of every prompt.
Example: Microsoft's Phi-3 template with the Phi-3 tokenizer.
Fix: decide once: write `{{ bos_token }}` at the start of the template (then both have it), or serve without BOS;
`--add-special-tokens yes` checks a pipeline that encodes with `tokenizer(text)` instead.
""", "tokens/bos_serving_only.jsonl", per_file=True),
]
