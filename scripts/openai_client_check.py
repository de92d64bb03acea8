#!/usr/bin/env python3
"""Checks `unmask serve` with the unmodified official OpenAI Python client.

    pip install openai
    unmask serve --model DIR --port 8080 &
    python3 scripts/openai_client_check.py --base-url http://127.0.0.1:8080/v1 "What is 23+45?"

For each question: the chat answer with temperature=0, streamed and not, must be the same text
(also with the `unmask_events` extension on, which the client must ignore, and with one token
committed per step, so that the text arrives in many deltas), and so must the legacy
completions endpoint. Exits non-zero on any difference.
"""

import argparse
import sys

from openai import OpenAI


def chat(client, model, question, stream, extra=None):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        extra_body=extra or {},
    )
    if not stream:
        r = client.chat.completions.create(**kwargs)
        return r.choices[0].message.content, r.usage
    text, usage, chunks = "", None, 0
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    ):
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text, usage, chunks


def completion(client, model, prompt, stream):
    if not stream:
        r = client.completions.create(model=model, prompt=prompt, temperature=0)
        return r.choices[0].text
    return "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, temperature=0, stream=True
        )
        if c.choices
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("questions", nargs="*", default=["What is 23+45?"])
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    models = [m.id for m in client.models.list()]
    print(f"models: {models}")
    model = models[0]
    failed = 0
    for q in args.questions:
        plain, usage = chat(client, model, q, stream=False)
        streamed, s_usage, chunks = chat(client, model, q, stream=True)
        events, _, e_chunks = chat(client, model, q, True, {"unmask_events": True})
        # One token per step: the text arrives over many steps and deltas.
        slow = {"threshold": 1.0, "block_length": 8, "steps": 8}
        slow_plain, _ = chat(client, model, q, False, slow)
        slow_streamed, _, s_chunks = chat(client, model, q, True, dict(slow, unmask_events=True))
        raw = completion(client, model, q, stream=False)
        raw_streamed = completion(client, model, q, stream=True)
        same = (
            plain == streamed == events
            and slow_plain == slow_streamed
            and raw == raw_streamed
            and usage == s_usage
        )
        failed += not same
        print(
            f"{'ok  ' if same else 'FAIL'} {q!r}: chat {plain!r} | streamed {streamed!r} "
            f"({chunks} chunks) | with unmask_events {events!r} ({e_chunks} chunks) | "
            f"one token per step {slow_plain!r} / streamed {slow_streamed!r} ({s_chunks} chunks) | "
            f"completions {raw!r} / streamed {raw_streamed!r} | usage {usage.prompt_tokens}+"
            f"{usage.completion_tokens} (stream: {s_usage.prompt_tokens}+{s_usage.completion_tokens})"
        )
    print(f"{len(args.questions) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
