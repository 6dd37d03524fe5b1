"""G codes: the exported model as a server will run it (``tmplcheck verify-model``: a GGUF, a model folder or an
Ollama Modelfile, against the template and tokenizer the data was approved and trained with).

A model that trained on the right template still misbehaves when what ships with it says otherwise: a GGUF without
``tokenizer.chat_template`` (llama.cpp falls back to ChatML), a template edited after training, an end-of-turn id
missing from the stop set (the model writes it and the server keeps going), BOS doubled or missing, a Modelfile
whose TEMPLATE is ``{{ .Prompt }}`` or whose stops miss the end-of-turn. How llama.cpp's built-in format (no
``--jinja``) renders the approved rows is reported with the X codes.
"""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "G"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("G001", "no-embedded-template", E, "The model carries no chat template.",
         """
What: the GGUF has no `tokenizer.chat_template` key (a model folder: no `chat_template` in tokenizer_config.json
and no chat_template.jinja).
Why it hurts: the server has to guess. llama.cpp (`llama_model_chat_template` returns nothing) falls back to ChatML,
llama-cpp-python to its Python "llama-2" format, Ollama to `{{ .Prompt }}`: the served model is prompted in a
format it never saw, and answers with role words, other headers, or never stops.
Example: a GGUF converted from a folder whose tokenizer_config.json lost its `chat_template` when it was saved.
Fix: export with `tmplcheck export RUN_DIR` (it writes the validated template into the GGUF), or set it with the
gguf package's `gguf_new_metadata.py --chat-template-config`.
""", "serving/no_template.gguf"),
    Rule("G002", "embedded-template-differs", E, "The embedded chat template is not the one the data was validated "
                                                 "and trained with.",
         """
What: `tokenizer.chat_template` differs from the validated template's text. The message names the first differing
line and how many of the approved rows render differently with it (as llama-server --jinja and llama-cpp-python
render it), with the first difference.
Why it hurts: every chat request is formatted by the embedded template. A template that drops the end-of-turn, trims
differently or adds a default system prompt serves a prompt the model was not trained on.
Example: the GGUF carries the upstream template with a date preamble; training used the plain one.
Fix: re-export from the run (`tmplcheck export`), or replace the key with the validated template.
""", "serving/template_differs.gguf"),
    Rule("G003", "stop-set-misses-end-of-turn", E, "An end-of-turn id of the template is not in the model's stop set.",
         """
What: the template closes assistant turns with a token (Llama 3's `<|eot_id|>` = 128009) that is neither the GGUF's
`tokenizer.ggml.eos_token_id` nor its `eot_token_id`/`eom_token_id` (a model folder: not in generation_config.json's
`eos_token_id`).
Why it hurts: the model ends its answer with that token and a runtime that takes the stop set from these keys does
not stop: it writes on into a new header ("assistant", "user") or rambles until max_tokens. llama.cpp itself also
stops on about twenty well-known end-of-turn texts (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`...) whatever the
keys say (the message says when it would), but llama-cpp-python's chat formatter passes only the eos text as its
stop string, and other readers of the GGUF (and a token outside llama.cpp's list) have only the keys.
Example: a Llama 3 fine-tune exported with eos = `<|end_of_text|>` (128001) and no eot.
Fix: export with `tmplcheck export` (eos and eot = the end-of-turn id), or set `tokenizer.ggml.eos_token_id`.
""", "serving/stop_missing.gguf"),
    Rule("G004", "bos-doubled-at-inference", E, "A serving route starts the prompt with more BOS tokens than training "
                                                "did.",
         """
What: the rows were trained with N BOS tokens at the start (the template writes `bos_token`, or not); a route that
serves this model adds one more: the GGUF's `tokenizer.ggml.add_bos_token` is true and the route tokenizes a text
that already starts with BOS (a Modelfile TEMPLATE that writes `<|begin_of_text|>`, a built-in format that
hard-codes it), or training had none and the tokenizer adds one.
Why it hurts: the first position is out of distribution: quality drops, and some models answer with garbage.
llama.cpp warns "the final prompt starts with 2 BOS tokens".
Example: Modelfile `TEMPLATE <|begin_of_text|>{{ .Prompt }}...` with a GGUF whose add_bos_token is true.
Fix: leave BOS to the tokenizer (remove it from the Modelfile template), or export add_bos_token to match.
""", "serving/modelfile_bos.Modelfile"),
    Rule("G005", "bos-missing-at-inference", E, "A serving route starts the prompt with fewer BOS tokens than training "
                                                "did.",
         """
What: training started every row with BOS (the template writes `bos_token`); the GGUF's `add_bos_token` is false, so
the routes that leave BOS to the tokenizer (llama.cpp's built-in formats without --jinja, llama-server --jinja which
strips the template's BOS only to re-add it, Ollama) start the prompt without one.
Why it hurts: the model never saw a sequence without its BOS; the first token's attention sink is missing and the
output degrades, sometimes badly.
Example: a Llama 3 export with `tokenizer.ggml.add_bos_token = false`.
Fix: export with add_bos_token true (`tmplcheck export` sets it from the template).
""", "serving/bos_missing.gguf"),
    Rule("G006", "modelfile-prompt-only", E, "The Modelfile's TEMPLATE sends the raw prompt without the chat format.",
         """
What: TEMPLATE is missing or is `{{ .Prompt }}` with nothing around it (or renders no role header, no end-of-turn).
Why it hurts: Ollama sends the user's text as is: no system header, no assistant cue. The model continues the text
instead of answering, and never writes the end-of-turn it was trained to stop on.
Example: `FROM ./model.gguf` + `TEMPLATE {{ .Prompt }}`.
Fix: use the Modelfile `tmplcheck export` writes (TEMPLATE derived from the validated template).
""", "serving/prompt_only.Modelfile"),
    Rule("G007", "modelfile-stop-missing", E, "An end-of-turn string of the template is not a PARAMETER stop.",
         """
What: the template ends assistant turns with `<|eot_id|>` but the Modelfile has no `PARAMETER stop "<|eot_id|>"`.
Why it hurts: Ollama stops on the stop strings it is given (and the GGUF's end-of-generation ids); with the
end-of-turn missing a model whose GGUF does not declare it goes on past its answer.
Example: `PARAMETER stop "<|end_of_text|>"` only, for a Llama 3 fine-tune.
Fix: one `PARAMETER stop` line per end-of-turn string.
""", "serving/stop_missing.Modelfile"),
    Rule("G008", "modelfile-format-differs", E, "The Modelfile's TEMPLATE renders the approved rows' prompts "
                                                "differently from the training template.",
         """
What: the TEMPLATE (Go template syntax, rendered here as Ollama renders it: `.System`/`.Prompt`/`.Response` or
`range .Messages`) produces, for an approved row's prompt, a text that differs from the validated template's
inference prompt (its BOS left to the tokenizer). The message shows the first difference.
Why it hurts: Ollama formats every request with it; a header or a newline that differs from training is a prompt
the model never saw.
Example: TEMPLATE `<|start_header_id|>user<|end_header_id|>\\n{{ .Prompt }}` (one newline) for Llama 3 (two).
Fix: use the Modelfile `tmplcheck export` writes.
""", "serving/format_differs.Modelfile"),
    Rule("G009", "unreadable-model", E, "The model file or folder cannot be read as what it claims to be.",
         """
What: not a GGUF (bad magic, truncated metadata), a model folder without tokenizer files, a Modelfile whose FROM
or TEMPLATE cannot be parsed, or a TEMPLATE with Go-template syntax outside what Ollama's templates use.
Why it hurts: nothing can be verified; a server would refuse it or load something else.
Example: a GGUF cut short by a failed download.
Fix: export again; the message names the file and what failed.
""", "serving/not_gguf.gguf"),
]
