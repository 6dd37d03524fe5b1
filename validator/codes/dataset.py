"""D codes: the dataset file itself, before any template is involved."""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "D"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("D001", "invalid-json", E, "A line is not valid JSON.",
         """
What: the line could not be parsed as JSON; the message gives the column where parsing stopped.
Why it hurts: loaders either crash on it or (with `on_bad_lines="skip"`) drop the row silently, so the model trains
on less than you think.
Example: `{"conversations": [{"from": "human", "value": "hi"}]` (missing closing brace).
Fix: repair the row; a common cause is a writer that printed Python dicts (`'` quotes, `True`) instead of JSON.
""", "dataset/invalid_json.jsonl"),
    Rule("D002", "invalid-utf8", E, "A line is not valid UTF-8.",
         """
What: the bytes of the line do not decode as UTF-8 (the message gives the byte offset).
Why it hurts: tokenizers need text; a loader either fails or replaces bytes with U+FFFD, training the model on
mojibake.
Fix: re-encode the file as UTF-8 (`iconv -f cp1252 -t utf-8`), or fix the writer.
""", "dataset/invalid_utf8.jsonl"),
    Rule("D003", "utf8-bom", W, "The file starts with a UTF-8 byte-order mark.",
         """
What: the first bytes are EF BB BF. tmplcheck reads past it; many JSONL readers (`json.loads` per line, jq) do not.
Why it hurts: the first row fails to parse in other tools, or the BOM becomes part of the first key.
Fix: save as UTF-8 without BOM.
""", "dataset/bom.jsonl"),
    Rule("D004", "crlf-line-ending", W, "A line ends with CRLF instead of LF.",
         """
What: the line ends in `\\r\\n`. JSON tolerates the `\\r`, but tools that split on `\\n` keep it in the last value
when the line is not JSON-terminated, and diffs of the dataset get noisy.
Fix: convert line endings (`dos2unix`).
""", "dataset/crlf.jsonl"),
    Rule("D005", "blank-line", W, "A blank line in a JSONL file.",
         """
What: a line holding nothing or only whitespace.
Why it hurts: strict JSONL readers fail on it; lenient ones skip it, shifting every later line number in their errors.
Fix: remove blank lines.
""", "dataset/blank_line.jsonl"),
    Rule("D006", "row-not-object", E, "A row is valid JSON but not an object.",
         """
What: the line holds a list, string, number or null instead of `{"conversations": [...]}` or `{"messages": [...]}`.
Fix: wrap the conversation in an object with a `conversations` (ShareGPT) or `messages` (OpenAI) field.
""", "dataset/row_not_object.jsonl"),
    Rule("D007", "missing-conversation", E, "A row has neither a `conversations` nor a `messages` field.",
         """
What: the object lacks the field that holds the turns (ShareGPT `conversations`, OpenAI `messages`).
Why it hurts: trainers skip such rows or crash on them.
Fix: rename the field, or pass `--input-format` if your file uses one of the two formats under another shape.
""", "dataset/missing_conversation.jsonl"),
    Rule("D008", "conversation-not-list", E, "The conversation field is not a list of messages.",
         """
What: `conversations`/`messages` holds a string, object or null instead of a list.
Fix: make it a JSON list of message objects.
""", "dataset/conversation_not_list.jsonl"),
    Rule("D009", "message-not-object", E, "A message is not a JSON object.",
         """
What: an element of the conversation list is a string, list or null.
Fix: each message must be `{"from": ..., "value": ...}` (ShareGPT) or `{"role": ..., "content": ...}` (OpenAI).
""", "dataset/message_not_object.jsonl"),
    Rule("D010", "message-missing-field", E, "A message lacks its role or its content field.",
         """
What: a ShareGPT message without `from` or `value`, or an OpenAI message without `role` or `content`.
Why it hurts: the template renders an empty or `None` turn, or raises mid-training.
Fix: add the field. Mixing `role`/`content` into ShareGPT rows (or the reverse) is a common cause.
""", "dataset/message_missing_field.jsonl"),
    Rule("D011", "field-wrong-type", E, "A role or content field has the wrong JSON type.",
         """
What: the role is not a string, or the content is a number, object, boolean or null.
Why it hurts: Jinja renders `None` as the text "None" and numbers as their repr; the model learns that text.
Fix: make content a string (an assistant turn with tool calls only needs `""`, not null).
""", "dataset/field_wrong_type.jsonl"),
    Rule("D012", "unknown-role", E, "A message has a role that no chat template knows.",
         """
What: in an OpenAI `messages` row, a role other than system, developer, user, assistant, tool, ipython or function;
in a ShareGPT row, a `from` name that is not in the ShareGPT table (README "Roles": human/user, gpt/assistant/
model/bot/chatgpt/bard, system, function_call, observation/tool/function/function_response, ipython).
OpenAI roles are never aliased: transformers passes the role to the template exactly as written, so tmplcheck
renders and checks the row with it (a `bot` header the model never saw) and reports it here.
Why it hurts: templates either drop the turn silently, print the role verbatim as a header, or raise.
Fix: map the role to one of the known ones.
""", "dataset/unknown_role.jsonl"),
    Rule("D013", "empty-content", E, "A message's content is empty or only whitespace.",
         """
What: `""` or whitespace-only content; for an assistant turn, empty content *and* no tool call (an assistant turn
that only calls a tool needs no content).
Why it hurts: an empty assistant turn trains the model to answer with nothing but its end-of-turn token; an empty
user turn teaches it to answer nothing. Trimming templates (llama3, gemma) then disagree with non-trimming ones.
Fix: drop the turn (and its partner) or fill it.
""", "dataset/empty_content.jsonl"),
    Rule("D014", "content-edge-whitespace", W, "Content starts or ends with whitespace.",
         """
What: leading or trailing spaces or newlines in a message.
Why it hurts: some renderers trim content (llama.cpp's llama3, gemma, command-r formats; templates with `|trim`),
others do not, so training and serving see different tokens; a trailing newline before `<|eot_id|>` teaches the
model to emit a newline token before stopping.
Fix: strip the content, unless the whitespace is deliberate (code blocks).
""", "dataset/edge_whitespace.jsonl"),
    Rule("D015", "system-not-first", E, "A system message appears after the first message.",
         """
What: a system turn in the middle or at the end of a conversation.
Why it hurts: most templates only place a system prompt at the start; others raise, or render it as an ordinary
turn with a header the model never sees at inference.
Fix: move the system message to the front, or fold it into the user turn.
""", "dataset/system_not_first.jsonl"),
    Rule("D016", "multiple-system", E, "A conversation has more than one system message.",
         """
What: two or more system turns.
Why it hurts: templates keep only the first (Llama 3.1 uses messages[0]), concatenate them (llama.cpp gemma), or
raise; the trained model sees something other than what you wrote.
Fix: merge them into one system message.
""", "dataset/multiple_system.jsonl"),
    Rule("D017", "consecutive-same-role", E, "Two consecutive turns have the same role.",
         """
What: user followed by user, or assistant followed by assistant.
Why it hurts: Mistral and Gemma templates raise "roles must alternate"; others merge the headers, so the model
learns to emit a second header mid-answer.
Fix: merge the two turns, or insert the missing turn.
""", "dataset/consecutive_same_role.jsonl"),
    Rule("D018", "not-ending-with-assistant", W, "The conversation does not end with an assistant turn.",
         """
What: the last message is from the user (or system, or tool).
Why it hurts: the final turn trains nothing (it is masked), and it is often a sign of truncated data.
Fix: drop the trailing turn or add the missing answer.
""", "dataset/not_ending_with_assistant.jsonl"),
    Rule("D019", "no-assistant-turn", E, "The conversation has no assistant turn.",
         """
What: no message with the assistant role.
Why it hurts: with assistant-only loss masking, this row trains zero tokens; without masking it trains the model
to write user turns.
Fix: add the answer or drop the row.
""", "dataset/no_assistant_turn.jsonl"),
    Rule("D020", "duplicate-row", W, "A row repeats an earlier row exactly.",
         """
What: the conversation is identical (same roles and contents) to an earlier line, which the message names.
Why it hurts: duplicates are trained on twice as often, and they leak between train and eval splits.
Fix: deduplicate.
""", "dataset/duplicate_row.jsonl"),
    Rule("D021", "mixed-formats", E, "Rows use different formats (ShareGPT and OpenAI) in one file.",
         """
What: some rows use `conversations`/`from`/`value`, others `messages`/`role`/`content`.
Why it hurts: loaders pick the format from the first row and mis-read or drop the others.
Fix: convert all rows to one format.
""", "dataset/mixed_formats.jsonl"),
    Rule("D022", "line-too-long", E, "A line is larger than the size limit and was not loaded.",
         """
What: the line is over `--max-line-bytes` (10 MiB by default); it was skipped without reading it into memory.
Why it hurts: such rows are usually a corrupt write (a whole file on one line) or will be truncated anyway.
Fix: split the row, or raise the limit if it is genuine.
""", "dataset/line_too_long.jsonl"),
    Rule("D023", "empty-file", E, "The dataset holds no rows.",
         """
What: the file is empty or holds only blank lines (or a `.json` file holds an empty list).
Why it hurts: a training run on it does nothing, or fails late.
Fix: point the gate at the right file.
""", "dataset/empty.jsonl"),
    Rule("D024", "typed-content", W, "Content is a list of typed parts instead of a string.",
         """
What: OpenAI-style `[{"type": "text", "text": ...}]` content. tmplcheck joins the text parts to check them.
Why it hurts: many chat templates only handle string content and print the list's repr; others (Llama 3.2 vision,
Qwen2-VL) need the list. Non-text parts (images) cannot be trained by a text-only model.
Fix: use plain strings unless your template is a multimodal one.
""", "dataset/typed_content.jsonl"),
    Rule("D025", "first-turn-not-user", W, "The first non-system turn is not a user turn.",
         """
What: the conversation opens with an assistant (or tool) turn.
Why it hurts: Mistral and Gemma templates raise; Llama 3 trains a greeting with no prompt, which most serving
stacks never reproduce.
Fix: start with the user turn.
""", "dataset/first_turn_not_user.jsonl"),
    Rule("D026", "control-characters", E, "Content holds a NUL or another control character.",
         """
What: U+0000 or another C0/C1 control character other than tab, newline and carriage return.
Why it hurts: llama.cpp passes content as C strings, so a NUL cuts the message there; other control characters
are usually binary garbage from a scraper and tokenize into byte-fallback tokens.
Fix: strip them.
""", "dataset/control_characters.jsonl"),
    Rule("D027", "lone-surrogate", E, "Content holds an unpaired UTF-16 surrogate escape.",
         """
What: a JSON escape such as `\\ud83d` without its pair. Python reads it; it cannot be encoded as UTF-8.
Why it hurts: the Rust tokenizer and llama.cpp raise on such strings mid-training.
Fix: repair the emoji escape or drop the character.
""", "dataset/lone_surrogate.jsonl"),
    Rule("D028", "duplicate-key", W, "A JSON object has the same key twice; all but the last value are lost.",
         """
What: e.g. `{"from": "human", "value": "a", "value": "b"}`. JSON parsers keep only the last value.
Why it hurts: data silently disappears.
Fix: rename or merge the keys.
""", "dataset/duplicate_key.jsonl"),
    Rule("D029", "replacement-character", W, "Content holds U+FFFD, a sign of an earlier decoding error.",
         """
What: the Unicode replacement character (shown as �) appears in content.
Why it hurts: the original text was lost in a bad decode upstream; the model learns mojibake.
Fix: re-export the data from its source with the right encoding.
""", "dataset/replacement_character.jsonl"),
    Rule("D040", "tool-calls-not-list", E, "An assistant message's `tool_calls` is not a list of call objects.",
         """
What: `tool_calls` holds an object, a string or a list with non-objects instead of `[{"type": "function",
"function": {"name": ..., "arguments": {...}}}, ...]`.
Why it hurts: templates iterate `tool_calls`; a dict iterates its keys, a string its characters, so the call the
model is trained to make is garbage (or the template raises).
Fix: wrap a single call in a list; write each call as an object.
""", "dataset/tool_calls_not_list.jsonl"),
    Rule("D041", "tool-call-without-name", E, "A tool call has no function name.",
         """
What: a call whose `function.name` (or `name`) is missing, empty or not a string.
Why it hurts: the template writes `{"name": "", ...}` or nothing; the model learns calls no tool can receive.
Fix: name the function the call is for.
""", "dataset/tool_call_without_name.jsonl"),
    Rule("D042", "tool-arguments-double-encoded", E,
         "Tool-call arguments are a JSON string, and the template writes them with `tojson`.",
         """
What: `"arguments": "{\"city\": \"Paris\"}"` (OpenAI's API returns arguments as a string) with a template that
prints `arguments | tojson` without testing `is string` (Meta's Llama 3.1, Qwen2.5).
Why it hurts: the render holds `"{\"city\": \"Paris\"}"` — a quoted, escaped string — where the model must
generate `{"city": "Paris"}`. The model learns to double-encode every call; tool parsers reject it.
Fix: `json.loads` the arguments into an object before training (templates that test `is string`, like Qwen3, are
not affected, and this finding is not given for them).
""", "dataset/tool_arguments_string.jsonl"),
    Rule("D043", "tool-arguments-invalid", E, "Tool-call arguments do not parse as a JSON object.",
         """
What: the arguments string is not JSON, or the arguments (parsed or given) are not an object; for a ShareGPT
`function_call` turn, its value is not a `{"name": ..., "arguments": ...}` object.
Why it hurts: the model is trained on calls no tool parser accepts.
Fix: repair the JSON; arguments are always an object (`{}` when the function takes none).
""", "dataset/tool_arguments_invalid.jsonl"),
    Rule("D044", "tool-call-undefined-function", E, "A tool call names a function the row's tools do not define.",
         """
What: the row has `tools` (or `--tools` gives them) and a call names a function that is not among them.
Why it hurts: the model is trained to call tools it was never shown — hallucinated calls at inference.
Fix: add the function's schema to `tools`, or fix the name.
""", "dataset/tool_call_undefined.jsonl"),
    Rule("D045", "tool-result-without-call", E, "A tool message answers no tool call.",
         """
What: a `tool` (or `ipython`, `function`, ShareGPT `observation`) message with no assistant tool call before it
since the last user turn, or whose `tool_call_id` matches none of the calls before it.
Why it hurts: templates that pair results with calls (by position or id) attach it to the wrong call, or raise;
the model learns results that answer nothing.
Fix: add the call, drop the stray result, or fix its `tool_call_id`.
""", "dataset/tool_result_without_call.jsonl"),
    Rule("D046", "tool-schema-invalid", E, "A `tools` entry is not a valid function schema.",
         """
What: an entry of the row's `tools` is not `{"type": "function", "function": {"name", "description",
"parameters"}}` (or the bare function object), or its `parameters` is not a valid JSON Schema (checked with the
`jsonschema` library, draft 2020-12).
Why it hurts: the template renders a broken tool definition into every prompt; the model learns from schemas no
serving stack will send.
Fix: write each tool as a JSON Schema function definition (`transformers.utils.get_json_schema` makes one).
""", "dataset/tool_schema_invalid.jsonl"),
    Rule("D047", "row-field-wrong-type", E, "The row's `tools` or `documents` is not a list.",
         """
What: `tools`/`documents` holds an object, a number, or a string that is not a JSON list (ShareGPT tool datasets
write `tools` as a JSON string; tmplcheck parses it).
Why it hurts: the template gets nothing it can iterate; the row is rendered without its tools.
Fix: make it a list of schemas (or documents).
""", "dataset/row_field_wrong_type.jsonl"),
    Rule("D048", "template-kwargs-invalid", E, "The row's `chat_template_kwargs` is not an object.",
         """
What: `chat_template_kwargs` (extra template arguments such as `enable_thinking`) is not a JSON object.
Why it hurts: the row is rendered without them, so with another setting than its author meant.
Fix: write an object, e.g. `{"enable_thinking": false}`.
""", "dataset/template_kwargs_invalid.jsonl"),
    Rule("D049", "mixed-role-conventions", W, "A ShareGPT row mixes role-name conventions.",
         """
What: a ShareGPT row uses both `human`/`gpt` and `user`/`assistant` names.
Why it hurts: both are mapped by the same table, but such rows usually come from merging datasets whose
converters disagreed; check that the turns are what their writers meant.
Fix: normalise the names in one pass.
""", "dataset/mixed_role_conventions.jsonl"),
    Rule("D050", "reasoning-mixed", W, "The file mixes rows with reasoning and rows without.",
         """
What: some rows' assistant turns carry reasoning (a `reasoning_content`/`thinking`/`reasoning` field or a
`<think>` block) and others do not. Reported once for the file, with the share of each.
Why it hurts: reasoning templates (Qwen3, DeepSeek-R1) insert an empty `<think></think>` block into rows without
reasoning, so the model learns to skip thinking on some share of prompts you did not choose.
Fix: make it deliberate: add reasoning, drop it, or set `enable_thinking` per row (`chat_template_kwargs`).
""", "dataset/reasoning_mixed.jsonl"),
    Rule("D051", "training-flag-not-assistant", E, "A non-assistant message carries a training flag.",
         """
What: a system, user or tool message has `weight` (OpenAI's fine-tuning format) or `train`/`trainable` (axolotl's
per-message flag). Only assistant turns are trained: tmplcheck's expected mask and `tmplcheck train` ignore the flag.
Why it hurts: the flag says someone meant this message to be trained (or not); trainers disagree on it — axolotl's
per-message `train: true` trains any role, OpenAI rejects `weight` outside assistant messages — so what is trained
depends on the trainer, not on the data.
Fix: remove the flag, or make the message an assistant turn.
""", "dataset/training_flag_not_assistant.jsonl"),
    Rule("D052", "training-flag-invalid", E, "A training flag has a value no trainer reads the same way.",
         """
What: `weight` is not 0 or 1, or `train`/`trainable` is not `true`/`false` (a string "false", a number). A `null`
flag counts as absent (columnar files fill absent struct fields with null).
Why it hurts: `"false"` is truthy in Python, a weight of 0.5 is rejected by OpenAI and read as "trained" by others:
the turn is trained or not depending on the trainer. tmplcheck treats the turn as unflagged (`--train-on` decides).
Fix: write `"weight": 0` / `1`, or `"train": false` / `true`.
""", "dataset/training_flag_invalid.jsonl"),
    Rule("D053", "nothing-to-train", E, "Every assistant turn of the row is flagged not to be trained.",
         """
What: after the per-message flags (`weight: 0`, `train: false`) and `--train-on`, no assistant turn of the row is
left in the loss.
Why it hurts: the row's labels are all -100: it costs compute and contributes nothing, and some trainers divide
by zero on it (NaN loss) or drop it silently.
Fix: drop the row, or flag at least one assistant turn for training.
""", "dataset/nothing_to_train.jsonl"),
]
