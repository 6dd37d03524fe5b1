"""T codes: the chat template itself, statically and as rendered for the rows of the dataset."""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "T"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("T001", "template-syntax-error", E, "The chat template does not compile.",
         """
What: Jinja could not parse the template; the message gives the template line and the parser's complaint
(an unclosed `{% if %}`, a stray `}}`, an unknown tag).
Why it hurts: transformers raises on the first `apply_chat_template` call, so training dies at step 0 or, worse,
a data pipeline catches the error and falls back to a default template the model was never trained on.
Example: `{% for m in messages %}{{ m.content }}` (no `{% endfor %}`).
Fix: repair the template at the given line; `tmplcheck render --template T --messages m.json` shows the output.
""", "templates/syntax_error.jinja"),
    Rule("T002", "undefined-variable", W, "The template prints a variable that nobody defines.",
         """
What: the template uses a name (often `bos_token` or a custom variable) that is neither passed by
`apply_chat_template` nor set in the template, and is not guarded by `is defined`. Jinja renders it as an empty
string, silently.
Why it hurts: the text trained on lacks whatever the author meant there: a missing `bos_token` means no BOS in
training while llama.cpp adds one at inference, a missing custom variable leaves holes in every prompt.
Example: a bare `.jinja` file using `{{ bos_token }}` checked without its tokenizer config.
Fix: load the template from the model directory (tokenizer_config.json gives the special tokens) or pass
`--tokenizer`; for a custom variable, give it a default: `{% if x is not defined %}{% set x = '' %}{% endif %}`.
""", "templates/undefined_variable.jinja"),
    Rule("T003", "template-raises", E, "The template raises an error for this row.",
         """
What: rendering the row failed: the template called `raise_exception` (Mistral's "roles must alternate", Gemma's
"System role not supported") or hit a Python error (iterating `None`, a missing key). The message quotes it.
Why it hurts: the trainer crashes on this row mid-epoch, or (with error-skipping collators) silently drops it, so
part of the data never trains; at inference the same conversation shape fails.
Example: a row with a system message checked with `--template gemma`.
Fix: reshape the row (merge the system message into the first user turn for Gemma; make roles alternate for
Mistral) or pick a template that supports the shape.
""", "templates/gemma_system.jsonl"),
    Rule("T004", "content-dropped", E, "The template silently drops a message's content.",
         """
What: tmplcheck renders the row's role sequence with a unique needle as each message's content; this needle does
not appear in the output. The template skips that role (Phi-3 skips tool turns, some templates drop all but the
first system message, a typo in a role test drops assistant turns).
Why it hurts: the model never sees that text in training, while your dataset statistics say it does; an assistant
turn dropped this way trains nothing and the row teaches the wrong conversation.
Example: a template with `{% if message.role == 'assistant ' %}` (trailing space): every answer vanishes.
Fix: render every role the dataset uses, or convert the role (e.g. tool results into user turns) before training.
""", "templates/drops_assistant.jinja"),
    Rule("T005", "content-repeated-or-moved", W, "A message's content appears more than once, or out of order.",
         """
What: in the needle probe a message's needle appears several times (the template repeats it, e.g. a system prompt
copied into every user turn), or the needles are not in conversation order (Mistral v3 templates move the system
message into the last user turn; reported as info).
Why it hurts: repeated content is trained several times and eats context; moved content means earlier turns are
trained without the instructions the model will see at inference.
Example: `{{ messages[0].content }}` printed before every user turn.
Fix: confirm the format really does this (it is sometimes intended); otherwise render each message once.
""", "templates/repeats_system.jinja"),
    Rule("T006", "missing-end-of-turn", E, "Nothing closes the assistant turn.",
         """
What: between an assistant message's content and the next turn (or the end of the text) the template writes none
of its end-of-turn strings (`<|eot_id|>`, `<|im_end|>`, `</s>`...). For a template without metadata the end of
turn is inferred by rendering: if nothing but the next header follows an answer, there is no end of turn.
Why it hurts: the model is never trained to emit a stop token, so at inference it runs on, writing the next
"user" turn itself, until max_tokens.
Example: a Llama 3 template whose assistant branch forgot `+ '<|eot_id|>'`.
Fix: close every assistant turn with the end-of-turn token the inference server stops on.
""", "templates/llama-3-no-eot.jinja"),
    Rule("T007", "generation-prompt-mismatch", E, "The generation prompt differs from the assistant header used in "
                                                   "training.",
         """
What: tmplcheck renders one user turn with `add_generation_prompt=True` (what inference feeds the model) and the
same turn followed by an answer (what training shows). The first must be exactly the second up to the answer.
Missing (the template ignores `add_generation_prompt` although training writes an assistant header) or different
text is an error; a difference in whitespace only is reported as info (tokenizers usually merge it into the
answer's first token, e.g. Mistral's `[/INST]` + ` answer`).
Why it hurts: at inference the model starts from a prompt it never saw in training: it writes the header itself,
or answers in the wrong role.
Example: `{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\\n{% endif %}` (one newline)
while turns use two.
Fix: make the generation prompt the exact assistant header of the turns.
""", "templates/generation_prompt_mismatch.jinja"),
    Rule("T008", "sandbox-violation", E, "The template tried something the sandbox refuses.",
         """
What: the template reached for Python internals (`__class__`, `__globals__`, `__subclasses__`, `cycler.__init__`,
`"{0.__class__}".format(x)`) or tried to modify its inputs (`messages.append`). The render was refused and nothing
was executed; the message says what was refused and at which template line. tmplcheck stops rendering this
template after the first violation.
Why it hurts: templates come from hub repos and GGUF files. This is a server-side template-injection attempt:
outside a sandbox it runs code on the machine that renders it (your training box, your inference server).
Fix: do not use this template; report the model repository.
""", "templates/ssti_class_walk.jinja"),
    Rule("T009", "render-limit-exceeded", E, "Rendering a row took too long or produced too much text.",
         """
What: the render ran past the time bound (2 s by default) or built a string/output over the size bound (4 million
characters): nested loops over huge ranges, strings doubled in a loop, deep recursion. The render was stopped.
tmplcheck stops rendering this template after the first such row.
Why it hurts: a template like this hangs or exhausts the memory of the data loader or the inference server
(a denial of service); legitimate chat templates render in milliseconds.
Fix: do not use this template, or remove the runaway construct.
""", "templates/exponential_growth.jinja"),
]
