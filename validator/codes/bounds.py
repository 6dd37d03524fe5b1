"""D codes for rows over a bound (``validator/bounds.py``): a row too deep, too large or with numbers JSON readers
refuse is reported where it is and not parsed further, so no line can stop the gate. Part of the D family; kept in
its own module so the bounds and their codes read together."""

from tmplcheck.validator.codes import Rule
from tmplcheck.validator.findings import Severity

PREFIX = "D"
E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO

RULES: list[Rule] = [
    Rule("D060", "row-too-deep", E, "A row nests arrays or objects deeper than the limit (64).",
         """
What: the row's JSON nests arrays/objects more than 64 levels deep (a chat row needs 3 or 4; tool schemas rarely
more than 20). The finding gives the column where the limit is passed. The row is not loaded.
Why it hurts: such a row is garbage or hostile; Python's JSON decoder (and recursive code after it) runs out of
stack on it — before this check, one such line ended the whole run.
Example: a line of 100,000 `[` characters.
Fix: remove the row, or flatten the structure (a tool's arguments as a JSON string).
""", "bounds/too_deep.jsonl"),
    Rule("D061", "row-too-large", E, "An object, array, conversation or string in a row is over its size limit.",
         """
What: an object with more than 1,000 keys, an array with more than 100,000 items, a conversation with more than
10,000 messages, or a string (a message content, a tool argument) of more than 1,000,000 characters. The pointer
names the value. The row is not checked further.
Why it hurts: no chat model trains on such a row as one example (it is truncated to its context length, losing every
answer's end-of-turn), and rendering and tokenizing it costs more than the rest of the file.
Fix: split the conversation or drop the row; `--max-line-bytes` bounds whole lines (D022).
""", "bounds/too_large.jsonl"),
    Rule("D062", "number-out-of-range", E, "A number JSON readers refuse: NaN, Infinity, or thousands of digits.",
         """
What: the row holds `NaN`, `Infinity` or `-Infinity` (Python's JSON extensions, not JSON), a number too large for a
double (`1e999`), or a number of more than 4,000 digits (Python refuses to convert more than 4,300).
Why it hurts: `datasets`/pyarrow, orjson and most other JSON readers refuse the whole file, so training fails (or,
where a reader accepts it, a weight or a tool argument becomes NaN).
Fix: write the value as a string, or as null.
""", "bounds/numbers.jsonl"),
]
