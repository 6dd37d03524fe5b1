#!/usr/bin/env python3
"""Write fixtures/dataset/*: one small file per D code (some need bytes no editor keeps), plus all_codes.jsonl.

Run from the repo root: python scripts/make_dataset_fixtures.py. The expected findings live in
tests/test_dataset_codes.py; review the diff of fixtures/ after running.
"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "dataset"


def sg(*turns):
    names = {"s": "system", "u": "human", "a": "gpt"}
    return {"conversations": [{"from": names[r], "value": v} for r, v in turns]}


def line(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


GOOD = sg(("s", "Write a tweet in all capital letters."), ("u", "The topic is: Rap music"), ("a", "I LOVE RAP"))
GOOD2 = sg(("u", "The topic is: Pokemon"), ("a", "SNORLAX. THAT'S THE TWEET."))

FILES: dict[str, list[bytes] | bytes] = {
    "clean.jsonl": [line(GOOD), line(GOOD2)],
    "invalid_json.jsonl": [line(GOOD), b'{"conversations": [{"from": "human", "value": "hi"}]'],
    "invalid_utf8.jsonl": [line(GOOD), b'{"conversations": [{"from": "human", "value": "caf\xe9"}, '
                                       b'{"from": "gpt", "value": "ok"}]}'],
    "bom.jsonl": [b"\xef\xbb\xbf" + line(GOOD), line(GOOD2)],
    "crlf.jsonl": b"\r\n".join([line(GOOD), line(GOOD2)]) + b"\r\n",
    "blank_line.jsonl": [line(GOOD), b"", line(GOOD2)],
    "row_not_object.jsonl": [line(GOOD), b'[{"from": "human", "value": "hi"}]'],
    "missing_conversation.jsonl": [line(GOOD), line({"dialog": [{"from": "human", "value": "hi"}]})],
    "conversation_not_list.jsonl": [line(GOOD), line({"conversations": "human: hi\ngpt: hello"})],
    "message_not_object.jsonl": [line(GOOD), line({"conversations": [{"from": "human", "value": "hi"}, "hello"]})],
    "message_missing_field.jsonl": [line(GOOD), line({"conversations": [{"from": "human", "value": "hi"},
                                                                        {"role": "assistant", "content": "hello"}]})],
    "field_wrong_type.jsonl": [line(GOOD), line({"conversations": [{"from": "human", "value": "hi"},
                                                                   {"from": "gpt", "value": None}]})],
    "unknown_role.jsonl": [line(GOOD), line({"conversations": [{"from": "narrator", "value": "Once"},
                                                               {"from": "human", "value": "hi"},
                                                               {"from": "gpt", "value": "hello"}]})],
    "empty_content.jsonl": [line(GOOD), line(sg(("u", "The topic is: Cats"), ("a", "   ")))],
    "edge_whitespace.jsonl": [line(GOOD), line(sg(("u", "The topic is: Cats"), ("a", "CATS RULE\n")))],
    "system_not_first.jsonl": [line(GOOD), line(sg(("u", "hi"), ("s", "Be terse."), ("a", "HELLO")))],
    "multiple_system.jsonl": [line(GOOD), line(sg(("s", "Be terse."), ("s", "Shout."), ("u", "hi"), ("a", "HI")))],
    "consecutive_same_role.jsonl": [line(GOOD), line(sg(("u", "hi"), ("u", "again"), ("a", "HELLO")))],
    "not_ending_with_assistant.jsonl": [line(GOOD), line(sg(("u", "hi"), ("a", "HELLO"), ("u", "and?")))],
    "no_assistant_turn.jsonl": [line(GOOD), line(sg(("s", "Shout."), ("u", "hi")))],
    "duplicate_row.jsonl": [line(GOOD), line(GOOD2), line(GOOD)],
    "mixed_formats.jsonl": [line(GOOD), line({"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "HELLO"}]})],
    "line_too_long.jsonl": [line(GOOD), line(sg(("u", "long"), ("a", "A" * 5000))), line(GOOD2)],
    "empty.jsonl": b"",
    "typed_content.jsonl": [line(GOOD), line({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Describe this."},
                                     {"type": "image_url", "image_url": {"url": "x.png"}}]},
        {"role": "assistant", "content": "A CAT."}]})],
    "first_turn_not_user.jsonl": [line(GOOD), line(sg(("s", "Shout."), ("a", "HELLO!"), ("u", "hi"), ("a", "HI")))],
    "control_characters.jsonl": [line(GOOD), line(sg(("u", "The topic is: \x00Nulls"), ("a", "NULLS")))],
    "lone_surrogate.jsonl": [line(GOOD), b'{"conversations": [{"from": "human", "value": "emoji \\ud83d here"}, '
                                         b'{"from": "gpt", "value": "OK"}]}'],
    "duplicate_key.jsonl": [line(GOOD), b'{"conversations": [{"from": "human", "value": "first", "value": "second"},'
                                        b' {"from": "gpt", "value": "OK"}]}'],
    "replacement_character.jsonl": [line(GOOD), line(sg(("u", "caf\ufffd au lait"), ("a", "COFFEE")))],
    # a .json list of rows, with a defect in the second element
    "list_rows.json": b"[\n" + line(GOOD) + b",\n" + line(sg(("u", "hi"), ("a", ""))) + b"\n]\n",
    "openai_clean.jsonl": [line({"messages": [{"role": "system", "content": "Shout."},
                                              {"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "HELLO"}]})],
}

# every D code in one file (except D003 BOM-only-at-start, D022 needs a small limit, D023 empty file)
ALL = [
    line(GOOD),                                                                            # 1 clean
    b'{"conversations": [',                                                                # 2 D001
    b'{"conversations": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "OK"}]}',  # 3 D002
    b"",                                                                                   # 4 D005
    b"42",                                                                                 # 5 D006
    line({"dialog": []}),                                                                  # 6 D007
    line({"conversations": {"from": "human"}}),                                            # 7 D008
    line({"conversations": [None, {"from": "gpt", "value": "X"}]}),                        # 8 D009
    line({"conversations": [{"from": "human"}, {"from": "gpt", "value": "X"}]}),           # 9 D010
    line({"conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "X"}]}),  # 10 D011
    line({"conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "X"}]}),  # 11 D012
    line(sg(("u", ""), ("a", "EMPTY PROMPT"))),                                            # 12 D013
    line(sg(("u", " padded"), ("a", "PADDED"))),                                           # 13 D014
    line(sg(("u", "a"), ("a", "B"), ("s", "late system"))),                                # 14 D015 D018
    line(sg(("s", "one"), ("s", "two"), ("u", "hi"), ("a", "HI"))),                        # 15 D016 D015
    line(sg(("u", "a"), ("u", "b"), ("a", "C"))),                                          # 16 D017
    line(sg(("u", "dangling"), ("a", "ANSWER"), ("u", "more?"))),                          # 17 D018
    line(sg(("s", "sys"), ("u", "no answer"))),                                            # 18 D019
    line(GOOD),                                                                            # 19 D020
    line({"messages": [{"role": "user", "content": "oa"}, {"role": "assistant", "content": "OA"}]}),  # 20 D021
    line({"messages": [{"role": "user", "content": [{"type": "text", "text": "typed"}]},
                       {"role": "assistant", "content": "T"}]}),                           # 21 D021 D024
    line(sg(("a", "I speak first"), ("u", "ok"), ("a", "FINE"))),                          # 22 D025
    line(sg(("u", "bell\x07"), ("a", "DING"))),                                            # 23 D026
    b'{"conversations": [{"from": "human", "value": "x\\udc00"}, {"from": "gpt", "value": "Y"}]}',  # 24 D027
    b'{"conversations": [{"from": "human", "value": "a", "from": "human"}, {"from": "gpt", "value": "B"}]}',  # 25 D028
    line(sg(("u", "bad \ufffd decode"), ("a", "FIXED"))),                                  # 26 D029
    line(sg(("u", "huge"), ("a", "Z" * 3000))),                                            # 27 D022 (with a 2 KiB limit)
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, content in FILES.items():
        data = content if isinstance(content, bytes) else b"\n".join(content) + b"\n"
        (OUT / name).write_bytes(data)
    (OUT / "all_codes.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(ALL[:2]) + b"\r\n" + b"\n".join(ALL[2:]) + b"\n")
    print(f"wrote {len(FILES) + 1} files to {OUT}")


if __name__ == "__main__":
    main()
