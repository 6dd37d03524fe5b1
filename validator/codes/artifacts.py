"""A codes: template artifacts leaked into a model's generations (``tmplcheck scan`` / ``tmplcheck report``).

Every pattern behind these codes comes from the template registry's metadata (special tokens, end-of-turn strings,
role headers, generation prompt, BOS), so a new template brings its own patterns.
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
What: a control-token string of any known template (`<|eot_id|>`, `<|im_end|>`, `</s>`, `[INST]`,
`<end_of_turn>`...) appears in the output, other than the template's own end-of-turn at the very end and the BOS
(which has its own code, A007).
Why it hurts: the model writes control tokens as part of its answer: either it was trained on data whose content
held them as text, or it learned a template other than the one it is served with; users see them, and a
stop-string-based server may cut answers at the wrong place.
Example: `Sure!<|im_end|>\\n<|im_start|>user` from a model trained on ChatML but served as Llama 3.
Fix: check the training data with `tmplcheck` (it flags control-token strings inside content) and train and serve
with the same template.
""", "generations/control_token.jsonl"),
    Rule("A004", "header-fragment", E, "A role header of a known template (or a mangled control-token name) appears in the text.",
         """
What: a whole rendered role header of any template in the registry (`<|start_header_id|>user<|end_header_id|>`,
`<|im_start|>assistant`, `<start_of_turn>model`, `[INST]`...), or the bare name of a control token that lost its
brackets (`start_header_id`, `im_start`).
Why it hurts: the model reproduces template structure: usually a model trained under one template and served under
another, or trained on rows that were rendered twice.
Example: `Paris.<|start_header_id|>assistant<|end_header_id|>` or `Sure! im_start user`.
Fix: serve with the exact template the model was trained with (`tmplcheck` reports cross-template drift), or clean
the training data of rendered headers.
""", "generations/header_fragment.jsonl"),
    Rule("A005", "conversation-continuation", E, "The model writes the next turn (user or system) itself.",
         """
What: after its answer the generation contains the header of a non-assistant role of the template followed by
text, rendered (`<|start_header_id|>user<|end_header_id|>\\n\\nThe topic is...`) or with its control tokens stripped
(`user\\n\\nThe topic is...`).
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
`<|im_start|>assistant`) appears inside the output (as text or as its token ids).
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
]
