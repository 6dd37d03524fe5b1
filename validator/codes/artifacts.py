"""A codes: template artifacts leaked into a model's generations (``tmplcheck scan`` / ``tmplcheck report``).

Every pattern behind these codes comes from the template registry's metadata (special tokens, end-of-turn strings,
role headers, generation prompt, BOS) and the tokenizer's special ids, so a new template brings its own patterns;
only reasoning and tool-call markup of formats outside the registry is listed by hand
(``tmplcheck.artifacts.patterns``).
"""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "A"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("A001", "trailing-role-word", E, "A role word ends a line or the output, left there by a stripped header.",
         """
What: "system", "user", "assistant", "model" (the role names the template's headers carry) at the end of a line or
of the output, glued to the text before it ("EVERsystem") or standing alone on its line. The check looks at the
text with every known control-token string removed, which is what a serving stack that hides special tokens shows.
Not a role word: part of a word (`subsystem`), prose (`ask the user`); with `output_ids`, any word the ids do not
hold the template's header around; from text alone, an attribute (`request.user`, `ctx.user`: a lowercase dotted
name that reads as code, or whose role word the conversation is about) unless the template's header tail follows it
(reported as the info A013).
Why it hurts: it is the classic sign of a template that omitted the end-of-turn token after assistant turns. With
packing, each answer was followed in training by the next row's header, so the model learned to go on into
`<|start_header_id|>system<|end_header_id|>`; the control tokens are skipped when decoding and the role word
stays: "You might see 'system' at the end of every line."
Example: `EVER BEST HATE THE EVERsystem\\n\\nWrite a tweet in all capital letters.`
Fix: train with a template that closes every assistant turn with its end-of-turn token (run `tmplcheck` on the data
with the template first: it flags the missing end-of-turn), and serve with that token in the stop set.
""", "generations/trailing_role_word.jsonl"),
    Rule("A002", "leading-role-word", E, "The output starts with a role word on its own, left by a stripped header.",
         """
What: the generation begins with "assistant", "model" or another role word followed by a line break (or glued to
the answer), after control tokens are removed.
Why it hurts: the model re-emits the assistant header it was already given. It was trained on renders whose
header differed from the generation prompt (a missing or doubled `add_generation_prompt`, a template that renders
the header twice), so every served answer starts with a stray role word.
Example: `assistant\\n\\nHELLO WORLD` after the prompt already ended in the assistant header.
Fix: make the training render and the inference generation prompt agree (`tmplcheck` checks that the prompt is a
prefix of the rendered conversation); retrain.
""", "generations/leading_role_word.jsonl"),
    Rule("A003", "control-token-in-text", E, "A literal control-token string appears inside the generated text.",
         """
What: a control token appears in the output, other than the template's own end-of-turn at the very end and the
BOS (which has its own code, A007). With `output_ids` and a tokenizer this is decided on ids: a control token is a
special id of the vocabulary, and text that only looks like one (`<s>` in HTML, `"<s>"` in C++) is text. From text
alone, only the control-token strings of the scanned template and tokenizer count (`<|eot_id|>` for Llama 3; another
family's strings are A004), and not inside code, quotes, an HTML tag pair, or when named in a sentence; the scan
summary says how many generations were judged from text.
Why it hurts: the model writes control tokens as part of its answer: either it was trained on data whose content
held them as text, or it learned a template other than the one it is served with; users see them, and a
stop-string-based server may cut answers at the wrong place.
Example: `Paris.<|eot_id|> Anything else?<|eot_id|>` under Llama 3: the turn ended, then went on.
Fix: check the training data with `tmplcheck` (it flags control-token strings inside content) and train and serve
with the same template.
""", "generations/control_token.jsonl"),
    Rule("A004", "header-fragment", E, "A role header of a known template (or a mangled control-token name) appears in the text.",
         """
What: a header or control token of another template (`<|start_header_id|>user<|end_header_id|>`,
`<|im_start|>user`, `<start_of_turn>user`, `[INST]`, `### Instruction:`, Vicuna v0's `### Human:`, `<|im_sep|>`) where
a model writes it (after a sentence, at a line start, glued to the text; anywhere in a line), or the bare name of a
control token that lost its brackets (`start_header_id`, `im_start`) or a mangled `<|>`. Not inside code or quotes,
not named in a sentence, not a speaker label the prompt asked for (`USER:` in a requested script).
Why it hurts: the model reproduces template structure: usually a model trained under one template and served under
another, or trained on rows that were rendered twice.
Example: `Paris.<|start_header_id|>assistant<|end_header_id|>` or `Sure! im_start user`.
Fix: serve with the exact template the model was trained with (`tmplcheck` reports cross-template drift), or clean
the training data of rendered headers.
""", "generations/header_fragment.jsonl"),
    Rule("A005", "conversation-continuation", E, "The model writes the next turn (user or system) itself.",
         """
What: the generation contains a non-assistant header of the template: rendered
(`<|start_header_id|>user<|end_header_id|>\\n\\nThe topic is...`, `USER: ...`, `### Instruction:` anywhere in a line
or bare at the end), with its control tokens stripped (`user\\n\\nThe topic is...`), or as the header's ids in
`output_ids` (an output decoded with special tokens skipped still holds them).
Why it hurts: the model never learned where its turn ends, so it plays both sides of the dialogue until the token
limit. Users see fake user questions; agents act on them.
Example: `HELLO WORLD<|start_header_id|>user<|end_header_id|>\\n\\nThe topic is: cats`.
Fix: the training template must end each assistant turn with the end-of-turn token and the labels must train it
(`tmplcheck` checks both); serve with that token in the stop set.
""", "generations/continuation.jsonl"),
    Rule("A006", "runaway-generation", E, "The generation hit the token limit without an end-of-turn.",
         """
What: `finish_reason` is `length`, or `output_ids` hold none of the stop ids (the tokenizer's EOS and the template's
end-of-turn ids) and no `finish_reason: "stop"` says otherwise.
Why it hurts: the model does not stop by itself; every answer runs to `max_tokens`, costing latency and showing
continuation garbage.
Example: `{"output": "HELLO HELLO HELLO ...", "finish_reason": "length"}`.
Fix: train the end-of-turn token (the mask must cover it) and put its id in generation_config.json's eos_token_id.
""", "generations/runaway.jsonl"),
    Rule("A007", "repeated-bos", E, "The generation contains the beginning-of-sequence token again.",
         """
What: the BOS string (`<|begin_of_text|>`, `<s>`, `<bos>`...) in the output text, or the BOS id in `output_ids`.
The prompt already began with one.
Why it hurts: the model starts a new document mid-answer; it learned this from packed training sequences where one
row's text ran straight into the next row's BOS, because the assistant turn had no end-of-turn.
Example: `EVER BEST<|begin_of_text|><|start_header_id|>system<|end_header_id|>`.
Fix: close every assistant turn with its end-of-turn token and train it; with packing, make sure rows are
separated by EOS.
""", "generations/repeated_bos.jsonl"),
    Rule("A008", "system-prompt-echo", E, "The generation repeats the conversation's system prompt.",
         """
What: the output holds the prompt's system message verbatim (or its first 48 characters when it is long).
Why it hurts: the model reproduces training context instead of answering: a sign it ran on into the next packed
row, whose first turn was the same system prompt.
Example: `EVERsystem\\n\\nWrite a tweet in all capital letters.`
Fix: as for A001 and A007: end-of-turn tokens in the template and in the labels.
""", "generations/system_echo.jsonl"),
    Rule("A009", "generation-prompt-repeated", E, "The generation repeats the template's generation-prompt header.",
         """
What: the assistant header that `add_generation_prompt` appends (`<|start_header_id|>assistant<|end_header_id|>`,
`<|im_start|>assistant`, `ASSISTANT:`, `### Response:`) appears inside the output (as text or as its token ids).
Why it hurts: the model answers, then opens another assistant turn (or starts by repeating the header): the
training render and the inference prompt disagree, or the end-of-turn was never trained.
Example: `Paris.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\nParis.`
Fix: train and serve with the same template and generation prompt; make sure the end-of-turn is trained.
""", "generations/generation_prompt_repeated.jsonl"),
    Rule("A010", "generation-row-invalid", E, "A generation row cannot be scanned: a field is missing or has the wrong type.",
         """
What: the row is not an object, has no string `output`, or its `prompt`, `output_ids` or `finish_reason` have the
wrong shape (`prompt` a string or a list of `{"role","content"}` messages, `output_ids` a list of integers,
`finish_reason` "stop" or "length").
Why it hurts: the row's generation is not scanned, so the rates are computed without it.
Example: `{"prompt": "hi", "output": null}`.
Fix: write rows as `{"prompt": ..., "output": "...", "output_ids": [...], "finish_reason": "stop"}`.
""", "generations/invalid_rows.jsonl"),
    Rule("A011", "reasoning-markup-leak", E,
         "Reasoning markup (think tags, harmony channels) appears in a final answer.",
         """
What: `<think>` / `</think>`, `[THINK]`, GPT-OSS harmony channel headers (`<|channel|>analysis<|message|>`,
`<|start|>assistant<|channel|>final`) or their skipped-token remains (`analysisThe user asks...assistantfinal4`) in
the output of a template that does not write them itself.
Why it hurts: the model was trained on reasoning traces rendered as plain text (or under a reasoning template) and
is served with a template that has no reasoning channel: users see the scratchpad, or the answer is cut at a tag.
Example: `<think>\\nThe user wants the boiling point.\\n</think>\\n\\nWater boils at 100 °C.`
Fix: train reasoning rows with a template that renders reasoning in its own channel (and masks it as intended), or
strip reasoning from the training data for a plain chat model.
""", "generations/reasoning_markup.jsonl"),
    Rule("A012", "tool-call-marker-leak", E, "A tool-call marker appears in an answer to a prompt without tools.",
         """
What: `<tool_call>` / `</tool_call>`, Llama 3.1's `<|python_tag|>` and `<|eom_id|>`, Mistral's `[TOOL_CALLS]`,
`<|tool_call|>` and similar markers in a generation whose row gave no `tools`.
Why it hurts: the model calls tools where none exist: it learned tool-call syntax from rows whose tool calls were
rendered as plain content (or by another family's template), and a serving stack without a tool parser shows the
raw call instead of an answer.
Example: `<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}` to "Is it warm in Paris?".
Fix: keep tool calls in `tool_calls` (not in content) so the template renders them with the tools they belong to;
train with the template the model is served with.
""", "generations/tool_call_marker.jsonl"),
    Rule("A013", "markup-in-code", I, "Template markup inside code or quotation: reported, not counted as a leak.",
         """
What: a control token, header, role word, reasoning tag or tool-call marker that the other A checks would report,
inside a fenced code block, a backtick span or a quoted string, and not confirmed as real by `output_ids`.
Why it hurts: usually it does not: a model that explains chat templates writes their tokens in code. It is listed so
that a model that hides real leaks in code blocks does not go unseen.
Example: ``The `<|eot_id|>` token ends a turn.``
Fix: nothing, when the prompt asked about the markup; otherwise look at the generation.
""", "generations/markup_in_code.jsonl"),
]
