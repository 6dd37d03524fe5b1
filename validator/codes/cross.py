"""X codes: the training render (HF Jinja) against llama.cpp's built-in chat formats, one row at a time.

llama.cpp's legacy chat path (``llama_chat_apply_template``, used by llama-server without ``--jinja`` and by many
Ollama-style wrappers that copy its formats) does not run the Jinja template: it detects one of ~50 hard-coded
formats from the template text and builds the prompt in C++. Each code below names one way the two can differ.
Explained differences are warnings or infos; a difference nothing explains is an error with a compact diff.
"""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "X"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("X001", "bos-one-side", I, "The BOS token is written by one renderer only.",
         """
What: the training text starts with the template's `bos_token` (e.g. `<|begin_of_text|>`, `<s>`, `<bos>`) and
llama.cpp's built-in format does not write it (or the reverse for the few built-ins that hard-code a prefix).
Why it matters: llama.cpp leaves BOS to the tokenizer (`add_bos`), so the served token sequence usually still
starts with exactly one BOS. It only hurts when the training tokenizer *also* adds BOS to a text that already has
one (two BOS tokens in training, one at serving); the K codes check that.
Example: Llama 3 — template `<|begin_of_text|><|start_header_id|>user...`, llama.cpp `<|start_header_id|>user...`.
Fix: nothing for the cross check; make sure the training tokenizer is called with `add_special_tokens=False`
when the template writes BOS itself.
""", "cross/bos_one_side.jsonl", per_file=True),
    Rule("X002", "eos-one-side", I, "The text ends with an EOS token written by one renderer only.",
         """
What: the template appends `eos_token` after the last turn (Phi-3.5 writes `<|endoftext|>` after the final
`<|end|>`), llama.cpp's built-in format does not.
Why it matters: a served prompt never ends with EOS, so this only changes training: the model learns to emit EOS
after its end-of-turn token. Harmless when EOS is a stop token at inference, confusing when it is not.
Fix: usually nothing; make sure the inference stop set contains both the end-of-turn and the EOS ids.
""", "cross/eos_one_side.jsonl", per_file=True),
    Rule("X003", "content-trimmed", W, "One renderer strips whitespace around message content, the other keeps it.",
         """
What: llama.cpp's llama3, llama4, gemma, command-r, exaone, minicpm, rwkv-world and llama2-sys-strip formats (and
mistral-v3 / seed_oss for assistant turns, grok-2 for system and user turns) strip leading and trailing ASCII
whitespace from content; the training template kept it. Or the template trims (Jinja `|trim` also strips Unicode
spaces such as NBSP) where llama.cpp keeps the bytes.
Why it hurts training: the model is trained on tokens (`"\\n\\n"` before `<|eot_id|>`, a leading space) that it
never sees at serving time, and learns to emit whitespace before stopping.
Example: assistant content `"Paris.\\n"` — training `Paris.\\n<|eot_id|>`, llama.cpp `Paris.<|eot_id|>`.
Fix: strip message content in the dataset (see D014), unless the whitespace is meaningful.
""", "cross/content_trimmed.jsonl"),
    Rule("X004", "system-folded", W, "The system prompt is placed differently: folded into a user turn or separated differently.",
         """
What: one renderer puts the system message into the first (or last) user turn, or separates it with other
characters than the other renderer does. llama.cpp's formats without a system role fold it into the first user
turn (gemma: `sys\\n\\nuser`, llama2: `sys\\n`, mistral-v1/v3: in place with `\\n\\n`); official Mistral v3
templates put it in the *last* user turn; deepseek3 adds `\\n\\n` after it.
Why it hurts training: the model is trained with the system prompt in one place and served with it in another;
long conversations drift from the instructions it was tuned to follow.
Example: Mistral Nemo — training `[INST]Q1[/INST]A1</s>[INST]sys\\n\\nQ2[/INST]`, llama.cpp `[INST]sys\\n\\nQ1...`.
Fix: serve with the template itself (llama-server `--jinja`), or fold the system prompt in the dataset the way the
serving stack does.
""", "cross/system_folded.jsonl"),
    Rule("X005", "system-dropped", W, "One renderer drops the system message that the other renders.",
         """
What: the template silently ignores system messages (Phi-3 mini/medium, some Orion/Yandex templates) while
llama.cpp renders them, or llama.cpp drops them (yandex; gigachat after the first message) while the template
renders them.
Why it hurts training: system prompts in the dataset are either never trained (template drops them) or trained
but never served (llama.cpp drops them); either way instructions behave differently in production.
Fix: remove system messages from the dataset or fold them into the user turn explicitly.
""", "cross/system_dropped.jsonl"),
    Rule("X006", "preamble-one-side", W, "Text before the conversation (date lines, a default system prompt) is rendered by one side only.",
         """
What: the template injects text llama.cpp's fixed format never writes: Llama 3.1's
`Cutting Knowledge Date: December 2023\\nToday Date: ...` lines, Qwen2.5's default "You are Qwen..." system turn,
Granite's and gpt-oss's default system headers. (Or a llama.cpp built-in writes a default system turn the template
does not, e.g. bailing2's "detailed thinking off".)
Why it hurts training: training conditions every answer on a preamble (and a date) that a server using llama.cpp's
built-in format never sends.
Fix: serve with the Jinja template (llama-server `--jinja`), or pin/remove the preamble in the training template.
""", "cross/preamble_one_side.jsonl", per_file=True),
    Rule("X007", "format-redetected", W, "llama.cpp's detection picks a different format than the template's own.",
         """
What: llama.cpp chooses its built-in format by substring tests on the template text. Every template containing
`<|im_start|>` becomes plain chatml (Qwen3's `<think>` blocks, tool schemas and default prompts are dropped);
Tekken Mistral templates (`[INST]Q[/INST]A`) are detected as mistral-v7, which adds spaces (`[INST] Q[/INST] A`);
template-only markup (`<think></think>`, `<|channel|>final`, `<|START_TEXT|>`) is never written by the built-in.
The message names the built-in that would match, or the template text that the built-in leaves out.
Why it hurts training: the served prompt is tokenized differently from every training example.
Fix: serve with `--chat-template NAME` (the matching built-in the message names) or with `--jinja`.
""", "cross/format_redetected.jsonl", per_file=True),
    Rule("X008", "generation-prompt-ignored", I, "The assistant cue at the end differs because a renderer ignores add_generation_prompt.",
         """
What: llama.cpp's mistral, llama2, orion, minicpm and hunyuan formats ignore `add_ass` (their user turn already
ends with the cue), and rwkv-world appends `Assistant:` whenever the last message is a user message. The template
adds or omits the generation prompt as asked.
Why it matters: only for prompts (evaluation, generation), not for training rows that end with an assistant turn.
Fix: nothing, unless the prompts you evaluate with depend on it.
""", "cross/generation_prompt_ignored.jsonl", per_file=True),
    Rule("X009", "nul-truncates-content", W, "A NUL character cuts the message short in llama.cpp.",
         """
What: llama.cpp receives message content as C strings, so everything after a U+0000 in a role or content is lost
when it formats the chat; the training template keeps the whole text.
Why it hurts training: the served model sees a different (shorter) conversation than the one it was trained on.
Fix: remove NUL characters from the dataset (D026 flags them too).
""", "cross/nul_truncates_content.jsonl"),
    Rule("X010", "template-unknown-to-llama-cpp", W, "llama.cpp does not recognise the template (it returns -1).",
         """
What: none of llama.cpp's detection heuristics matches the template text, so `llama_chat_apply_template` fails
with -1. llama-server without `--jinja` then falls back to another format (chatml) and Ollama-style importers
need a hand-written template.
Why it hurts training: the model will be served in a format it was never trained on unless the server runs the
Jinja template itself.
Example: Gemma 4, MiniMax, Apertus, Kimi-K3 templates.
Fix: serve with llama-server `--jinja` (or give the matching built-in with `--chat-template NAME`), and record the
serving format next to the model.
""", "cross/template_unknown.jsonl", per_file=True),
    Rule("X011", "unexplained-render-difference", E, "The training render and llama.cpp's render differ in a way nothing explains.",
         """
What: after removing every known, explained difference (BOS/EOS, trimming, system placement, preambles, format
re-detection, generation prompt) the two texts still differ. The message shows where, with both snippets and
control characters made visible.
Why it hurts training: the model is trained on one token layout and served with another — typically a missing or
different end-of-turn token, a different role header, or whitespace in the structure.
Example: a template whose assistant turn lacks `<|eot_id|>` — training `...Paris.<|start_header_id|>`, llama.cpp
`...Paris.<|eot_id|><|start_header_id|>`.
Fix: fix the template (compare it with the upstream one), or serve with `--jinja` and accept that llama.cpp's
built-in formats will not match.
""", "cross/unexplained.jsonl"),
    Rule("X020", "features-not-in-llama-cpp-format", W,
         "The row uses what llama.cpp's built-in formats cannot render: tools, tool calls, reasoning, template "
         "arguments.",
         """
What: the row (or the gate's `--tools`/`--documents`/`--template-kwargs`) carries tool definitions, tool calls,
tool results, reasoning, documents or template arguments. llama.cpp's built-in formats
(`llama_chat_apply_template`) take a role and a content per message and nothing else, so a server that formats
chats with them (llama-server without `--jinja`, importers that map a template to a built-in name) sends the model
a prompt without the tool schemas, without the calls it made and without its reasoning. The comparison of the two
renders is not made for such rows (every difference would be this one); the message lists what the row uses.
Why it hurts: the model is trained to call tools it is then never shown, in a format the server does not parse.
Example: a Llama 3.1 tool-use row: the training render holds the `Environment: ipython` system block, the JSON
tool list and the `<|python_tag|>` call; llama.cpp's llama3 format holds none of them.
Fix: serve with llama-server `--jinja` (llama.cpp's own Jinja engine renders the model's template with tools), and
check the served prompt once with `tmplcheck render --renderer llamacpp` versus `--renderer hf`.
""", "cross/tools_not_rendered.jsonl", per_file=True),
    Rule("X021", "jinja-server-variables-differ", W,
         "llama-server --jinja renders the template otherwise than transformers because it sets a variable otherwise.",
         """
What: llama-server with `--jinja` renders the model's own template with llama.cpp's Jinja engine, and passes other
variables than `apply_chat_template`: `enable_thinking=true` always, `add_generation_prompt` undefined (not false)
when there is no generation prompt, `tools` undefined (not None) without tools. The gate renders the first row of
each conversation shape both ways and, when they differ, switches llama-server's variables to transformers' values
one at a time; the message names the one(s) that make the renders agree. Reported once per file.
Why it hurts: the served prompt is not the one the model was trained on (a `<think>` block one side only, a
trailing header, a tool section), although both ran "the same template".
Example: a template that writes its thinking switch whenever `enable_thinking is defined`.
Fix: train with the value llama-server uses (`--template-kwargs '{"enable_thinking": true}'`), or serve with
`--chat-template-kwargs` matching training.
""", "cross/jinja_variables.jsonl", per_file=True),
    Rule("X022", "jinja-engine-differs", E,
         "llama.cpp's Jinja engine renders the template otherwise than Python's jinja2 with the same variables.",
         """
What: with every variable set as transformers sets it, llama.cpp's own Jinja engine (`common/jinja`, what
`llama-server --jinja` runs) and Python's jinja2 still render the conversation differently, or one of them refuses
it: the engines disagree on the template's constructs (an undefined value concatenated to a string, a filter or
method llama.cpp implements otherwise). Reported once per file, for the first row of each conversation shape.
Why it hurts: the served prompt differs from the training text in ways no setting fixes.
Example: `{{ 'x' + undefined_name }}` — jinja2 raises, llama.cpp renders `x`.
Fix: rewrite the construct so both engines agree (define the variable, avoid the filter), then re-check.
""", "cross/jinja_engine.jsonl", per_file=True),
]
