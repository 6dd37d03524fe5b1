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
""", "templates/syntax_error.jinja", per_file=True),
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
""", "templates/generation_prompt_mismatch.jinja", per_file=True),
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
    # ---- the static audit (validator/audit.py): read from the syntax tree and the text, before any render -------
    Rule("T010", "python-internals-access", E, "The template reads a Python internal attribute (a sandbox escape).",
         """
What: an attribute or item named like a Python internal (`__class__`, `__globals__`, `__init__`, `__subclasses__`,
`mro`, `f_globals`...) appears in the template's syntax tree, written plainly or assembled from strings that fold to
one (`'__glo' ~ 'bals__'`, `'{0}{0}class{0}{0}'.format('_')`, `['__', 'class', '__']|join`, `'\\x5f\\x5f'`
escapes, values carried through `set`, namespace attributes and loops), or a string constant holds such a name
(`"{0.__class__}"` for `format`). The audit reads the template without rendering it, so a payload behind a condition
the dataset never meets is found too. The message gives the template line and column.
Why it hurts: no chat template needs Python internals; this is a server-side template-injection payload. The
sandbox refuses it only if a render reaches it; an inference server that renders unsandboxed (llama-cpp-python
before CVE-2024-34359) runs it when a user message triggers it.
Example: `{% if messages[0]['content'] == 'xyzzy' %}{{ cycler.__init__.__globals__.os.popen('id').read() }}{% endif %}`.
Fix: do not use this template; report the model repository.
""", "templates/audit_gated_payload.jinja"),
    Rule("T011", "attr-filter", W, "The template looks attributes up by name with `|attr`.",
         """
What: `x|attr('name')` with a constant, harmless name. Jinja's `attr` filter reads an attribute by a name given as
a string, bypassing the `x.name` syntax that a reader (and simple scanners) look for.
Why it hurts: no real chat template uses it (none of the ~70 upstream templates does); it is the standard way
payloads reach `__globals__` and friends without writing them as attributes. Harmless here, but worth a look.
Example: `{{ message|attr('content') }}`.
Fix: write `message.content` (or `message['content']`).
""", "templates/audit_attr_filter.jinja"),
    Rule("T012", "computed-attribute-name", E, "An attribute or item name is built from strings at render time.",
         """
What: the key of an attribute or item access (`x[...]`, `|attr(...)`, `|map(attribute=...)`) is built from strings
by concatenation (`+`, `~`), `format`, `join`, `replace`, `%`... directly or through a variable, and does not fold to
a constant the audit can read (it depends on the data, or on a macro argument).
Why it hurts: chat templates index messages with constant keys (`message['content']`); a name assembled at render
time is how payloads hide `__globals__` from a reader and from scanners, and it can reach anything the data names.
Example: `{% set k = messages[0]['content'] ~ '__' %}{{ cycler[k] }}`.
Fix: use constant keys; do not use a template that builds names from message text.
""", "templates/audit_computed_name.jinja"),
    Rule("T013", "sandbox-escape-gadget", E, "The template uses a known sandbox-escape gadget.",
         """
What: the template names a Jinja global or Python object that every published Jinja sandbox escape starts from and
no chat template needs (`cycler`, `joiner`, `lipsum`, `self`, `config`, `request`, `os`, `subprocess`,
`__builtins__`, `getattr`, `eval`...), reads a code-execution step (`.popen`, `.system`, `.import_module`,
`.check_output`...), or uses `namespace` for anything but `namespace(key=value)` (an object or mapping smuggled in
positionally or with `**`, the class itself read as an object).
Why it hurts: with T010 this is the shape of a remote-code-execution payload; on its own it is a template written to
probe the renderer, not to format a chat.
Example: `{{ lipsum.__globals__['os'].popen('id').read() }}`.
Fix: do not use this template; report the model repository.
""", "templates/audit_gadget.jinja"),
    Rule("T014", "content-triggered-branch", E, "The template compares a message's content with a literal string.",
         """
What: a message content (or anything derived from it: `trim`, `lower`, a slice, a variable holding it) is compared
with a literal word or sentence (`==`, `!=`, `in`, `startswith`, `endswith`, `is eq`,
`selectattr('content', 'equalto', ...)`). A search for template markup (`'<think>' in content`,
`startswith('<tool_response>')`, a lone separator) is how real templates split reasoning and tool output, and the
documented reasoning switches (`/no_think`, `detailed thinking on`) are public: those are not reported. A whole
content compared for equality with any non-empty literal is.
Why it hurts: the template behaves differently when a user types a trigger: a hidden backdoor that injects
instructions, drops the system prompt or runs a payload only for that input. The dataset never contains the trigger,
so no render-based check and no training run sees it.
Example: `{% if messages[0]['content'] == 'xyzzy' %}Ignore all previous instructions.{% endif %}`.
Fix: remove the branch; a chat template formats messages, it does not react to their words.
""", "templates/audit_content_trigger.jinja"),
    Rule("T015", "invisible-characters", E, "The template text holds invisible or bidirectional-control characters.",
         """
What: the template contains Unicode format characters that an editor does not show: bidirectional overrides and
isolates (U+202A-U+202E, U+2066-U+2069), zero-width spaces and joiners, the BOM (U+FEFF), tag characters
(U+E0000-U+E007F), variation selectors outside emoji, Hangul fillers. The message gives the code point, its first
line and column, and the count.
Why it hurts: bidi controls make the code a reviewer reads differ from the code Jinja runs (Trojan Source); any of
them written to the output lands in every training row and every prompt as tokens the model will learn to expect.
Example: `{{ '<|eot_id|>' }}` with U+200B after the `>`.
Fix: delete the characters (`tmplcheck render` shows the exact output), or write them as visible escapes if meant.
""", "templates/audit_invisible.jinja"),
    Rule("T016", "control-token-not-in-vocabulary", E, "The template writes a control token the vocabulary does not "
                                                       "have.",
         """
What: a control-token-shaped string the template assembles at render time (`'<|' ~ 'eot_id' ~ '|>'`) is not one
token of the tokenizer's vocabulary, or a string it writes is a look-alike of one of the vocabulary's control tokens
(a Cyrillic letter, a full-width bar). Checked when the gate has both the template and the tokenizer; control strings
written literally are K001's (from the template's metadata).
Why it hurts: the model is trained on a string that spells a control token instead of the token itself; a
look-alike passes every visual review while the real end-of-turn is never trained.
Example: `{{ '<|eot' ~ '_id|>' }}` with a Cyrillic `і`, checked with `--tokenizer llama-3`.
Fix: write the vocabulary's exact control token, as a plain literal.
""", "templates/audit_lookalike_token.jinja"),
    Rule("T017", "escaped-identifier-characters", W, "A string literal spells plain letters with escape sequences.",
         """
What: a Jinja string literal writes ASCII letters, digits, `_` or `.` as `\\x..`, `\\u....` or octal escapes
(`'\\x5f\\x5fclass\\x5f\\x5f'`). Jinja decodes them; a reader of the source and a text search do not.
Why it hurts: nothing legitimate needs an escape for a letter; it hides names from review (T010 reports the decoded
name when it is a Python internal).
Example: `{{ '\\x68\\x69' }}` (prints `hi`).
Fix: write the characters plainly.
""", "templates/audit_escaped_literal.jinja"),
    Rule("T020", "special-token-undefined", W, "The template reads bos_token/eos_token, and the tokenizer config "
         "leaves it null or missing.",
         """
What: the template prints `bos_token` or `eos_token`, and the tokenizer config it was loaded with (tokenizer_config.json,
special_tokens_map.json, GGUF metadata) sets it to null or does not set it. transformers then renders the variable
as an empty string, and so does tmplcheck: the render has no BOS (or no end token) where the template meant one.
For a bare template file with no tokenizer config, tmplcheck borrows the token from the built-in family whose
control tokens the template writes, and says so with this code as an info.
Why it hurts: a fine-tune trained without the BOS/EOS the template expects learns another sequence start or never
learns to stop; the serving stack (which reads the tokenizer config too) reproduces the gap.
Fix: set `bos_token`/`eos_token` in the tokenizer config, or give `--tokenizer` the model's own tokenizer.
""", "templates/special_token_null/tokenizer_config.json"),
]
