"""Drives `reasonq serve` with the official openai SDK (run by tests/serve.rs).

OPENAI_BASE_URL and OPENAI_API_KEY name the server and its REASONQ_SERVE_KEY; WORK_DIR is
a scratch folder. Prints "SDK OK" when every step held.
"""

import json
import os
import time

from openai import OpenAI
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

client = OpenAI(max_retries=0, timeout=60)
work = os.environ["WORK_DIR"]


def write_input(name, n, prefix):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        for i in range(n):
            body = {
                "model": "grok-4",
                "temperature": 0,
                "messages": [{"role": "user", "content": f"{prefix} {i}"}],
            }
            line = {"custom_id": f"{prefix}-{i}", "method": "POST",
                    "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")
    return path


def create(path):
    with open(path, "rb") as f:
        file = client.files.create(file=f, purpose="batch")
    assert isinstance(file, FileObject) and file.purpose == "batch", file
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"by": "sdk"},
    )
    assert isinstance(batch, Batch) and batch.metadata == {"by": "sdk"}, batch
    return batch


def wait(batch_id, until, limit=60):
    deadline = time.time() + limit
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        assert time.time() < deadline, batch
        time.sleep(0.2)


# A batch to completion; its output parsed with the SDK's types.
small = create(write_input("small.jsonl", 4, "sdk line"))
done = wait(small.id, lambda b: b.status in ("completed", "failed", "cancelled"))
assert done.status == "completed", done
assert done.request_counts.total == 4 and done.request_counts.completed == 4, done
content = client.files.content(done.output_file_id)
lines = [json.loads(l) for l in content.text.splitlines()]
assert [l["custom_id"] for l in lines] == [f"sdk line-{i}" for i in range(4)], lines
for i, line in enumerate(lines):
    completion = ChatCompletion.model_validate(line["response"]["body"])
    assert completion.choices[0].message.content.endswith(f"sdk line {i}"), completion

# Cancel mid-run.
big = create(write_input("big.jsonl", 40, "sdk slow"))
wait(big.id, lambda b: b.request_counts.completed >= 1)
cancelling = client.batches.cancel(big.id)
assert cancelling.status in ("cancelling", "cancelled"), cancelling
cancelled = wait(big.id, lambda b: b.status == "cancelled")
assert cancelled.request_counts.completed < 40, cancelled

# Paging, newest first.
page = client.batches.list(limit=1)
assert [b.id for b in page.data] == [big.id] and page.has_more, page
ids = [b.id for b in client.batches.list(limit=1)]  # auto-pagination walks every page
assert ids == [big.id, small.id], ids

# Chat twice: the second answer comes from the server's cache.
request = dict(model="grok-4", temperature=0, messages=[{"role": "user", "content": "sdk chat"}])
first = client.chat.completions.create(**request)
second = client.chat.completions.create(**request)
assert isinstance(first, ChatCompletion), first
assert first.choices[0].message.content == second.choices[0].message.content

models = client.models.list()
assert any(m.id for m in models.data), models
print("SDK OK")
