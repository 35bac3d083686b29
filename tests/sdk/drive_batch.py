"""Drives `reasonq serve` with the official openai SDK (run by tests/serve.rs).

OPENAI_BASE_URL and OPENAI_API_KEY name the server and its REASONQ_SERVE_KEY; WORK_DIR is
a scratch folder. Prints "SDK OK" when every step held.

    drive_batch.py               the whole tour (below)
    drive_batch.py start N       creates a batch of N lines, waits for 4 answers, prints
                                 "BATCH <id>" (the test then kills the server)
    drive_batch.py finish ID N   against the restarted server: waits for ID to complete and
                                 checks its output holds each of the N lines once
"""

import json
import os
import sys
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


def lines_of(batch):
    content = client.files.content(batch.output_file_id)
    return [json.loads(l) for l in content.text.splitlines()]


if len(sys.argv) > 1 and sys.argv[1] == "start":
    n = int(sys.argv[2])
    batch = create(write_input("killed.jsonl", n, "sdk killed"))
    wait(batch.id, lambda b: b.request_counts.completed >= 4)
    print("BATCH", batch.id, flush=True)
    sys.exit(0)

if len(sys.argv) > 1 and sys.argv[1] == "finish":
    batch_id, n = sys.argv[2], int(sys.argv[3])
    done = wait(batch_id, lambda b: b.status in ("completed", "failed", "cancelled"))
    assert done.status == "completed", done
    assert done.request_counts.total == n and done.request_counts.completed == n, done
    assert done.request_counts.failed == 0, done
    ids = [l["custom_id"] for l in lines_of(done)]
    assert ids == [f"sdk killed-{i}" for i in range(n)], ids
    for line in lines_of(done):
        ChatCompletion.model_validate(line["response"]["body"])
    print("SDK OK", len(ids), "lines once each", flush=True)
    sys.exit(0)

# A batch to completion; its output parsed with the SDK's types.
small = create(write_input("small.jsonl", 4, "sdk line"))
done = wait(small.id, lambda b: b.status in ("completed", "failed", "cancelled"))
assert done.status == "completed", done
assert done.request_counts.total == 4 and done.request_counts.completed == 4, done
lines = lines_of(done)
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
