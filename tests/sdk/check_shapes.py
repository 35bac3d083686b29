"""Checks a reasonq batch output against the official openai SDK's types (run by
tests/endpoints.rs): each answered line's `response.body` must validate as the type the SDK
gives that endpoint's answer. Usage: check_shapes.py INPUT.jsonl OUTPUT.jsonl

Prints "SHAPES OK <n>" with the number of lines checked.
"""

import json
import sys

from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

TYPES = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/responses": Response,
    "/v1/embeddings": CreateEmbeddingResponse,
    "/v1/completions": Completion,
    "/v1/moderations": ModerationCreateResponse,
}

urls = {}
with open(sys.argv[1]) as f:
    for line in f:
        line = json.loads(line)
        urls[line["custom_id"]] = line["url"]

checked = 0
with open(sys.argv[2]) as f:
    for text in f:
        line = json.loads(text)
        if line.get("error") is not None:
            continue
        kind = TYPES[urls[line["custom_id"]]]
        body = line["response"]["body"]
        parsed = kind.model_validate(body)
        # Every field the server sent is one the type knows (nothing misspelt or invented).
        extra = parsed.model_extra or {}
        assert not extra, (line["custom_id"], extra)
        checked += 1
print("SHAPES OK", checked)
