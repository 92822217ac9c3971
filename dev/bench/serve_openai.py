#!/usr/bin/env python3
"""./serve driven by the official `openai` Python client, and its speed.

Starts ./serve on the default model (SmolLM2-135M-Instruct, NF4 round trip)
with two adapters: test/fixtures/peft_adapter as "faq" and a copy of it with
lora_alpha doubled as "faq2" (another adapter, the same size), then:
  1. checks that the client works: chat and completions, streamed and not
     (greedy: the streamed text equals the whole answer), models.list() and .retrieve(),
     an unknown adapter raising openai.NotFoundError, runtime load/unload;
  2. measures decode throughput: one client (requests one after another)
     and 8 clients at once, completion tokens / wall time;
  3. the adapter switch cost: mean latency of requests that alternate
     faq/faq2 against requests that all use faq (no reload, so ~0);
  4. the memory of an adapter: ./serve's log line, and the server's RSS
     before and after POST /v1/adapters.
Prints a block to paste into dev/RESULTS.md (with `uptime`'s load: the
machine may be shared).

    pip install openai
    python3 dev/bench/serve_openai.py [--workers N] [--max-tokens N]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai

PROMPT = "What is Debian?"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start_server(adapters, workers, log_path):
    args = ["./serve", "--port", "0", "--workers", str(workers), "--queue", "64"]
    for name, path in adapters.items():
        args += ["--adapter", f"{name}={path}"]
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stderr=log)
    for _ in range(1200):
        time.sleep(0.1)
        text = open(log_path).read()
        m = re.search(r"listening on (http://\S+)", text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            sys.exit("serve exited:\n" + text)
    sys.exit("serve did not start")


def chat(client, model, max_tokens, stream=False):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=max_tokens, temperature=0, stream=stream)


def check_client(client, url, max_tokens, twin_dir):
    whole = chat(client, "faq", max_tokens)
    text = whole.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, "faq", max_tokens, stream=True) if c.choices)
    assert streamed == text, (streamed, text)
    comp = client.completions.create(model="faq2", prompt="Debian is", max_tokens=8, temperature=0)
    comp_stream = "".join(c.choices[0].text for c in client.completions.create(
        model="faq2", prompt="Debian is", max_tokens=8, temperature=0, stream=True))
    assert comp_stream == comp.choices[0].text
    names = sorted(m.id for m in client.models.list().data)
    assert client.models.retrieve("faq").id == "faq"
    try:
        chat(client, "nope", 2)
        raise AssertionError("an unknown adapter was accepted")
    except openai.NotFoundError as e:
        not_found = str(e)[:120]
    body = json.dumps({"name": "faq3", "path": twin_dir}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "/v1/adapters", data=body, method="POST")).read()
    assert "faq3" in [m.id for m in client.models.list().data]
    urllib.request.urlopen(urllib.request.Request(url + "/v1/adapters/faq3", method="DELETE")).read()
    print(f"openai {openai.__version__}: chat {whole.usage.completion_tokens} tokens {text[:60]!r}; streamed equal; "
          f"completions streamed equal; models {names}, retrieve ok; unknown -> NotFoundError ({not_found!r}); load/unload ok")


def throughput(client, n_clients, requests_each, max_tokens):
    tokens = []

    def one_client(k):
        for _ in range(requests_each):
            r = chat(client, "faq" if k % 2 == 0 else "faq2", max_tokens)
            tokens.append(r.usage.completion_tokens)

    t0 = time.time()
    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - t0
    return sum(tokens) / seconds, sum(tokens), seconds


def switch_cost(client, n, max_tokens):
    def mean_latency(models):
        times = []
        for model in models:
            t0 = time.time()
            chat(client, model, max_tokens)
            times.append(time.time() - t0)
        return sum(times) / len(times)

    same = mean_latency(["faq"] * n)
    alternating = mean_latency(["faq", "faq2"] * (n // 2))
    return same, alternating


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    twin = os.path.join(tmp, "faq2")
    shutil.copytree("test/fixtures/peft_adapter", twin)
    config = json.load(open(os.path.join(twin, "adapter_config.json")))
    config["lora_alpha"] *= 2
    json.dump(config, open(os.path.join(twin, "adapter_config.json"), "w"))
    log_path = os.path.join(tmp, "serve.log")
    proc, url = start_server({"faq": "test/fixtures/peft_adapter", "faq2": twin}, args.workers, log_path)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        check_client(client, url, args.max_tokens, twin)
        before = rss_kib(proc.pid)
        body = json.dumps({"name": "faq4", "path": twin}).encode()
        urllib.request.urlopen(urllib.request.Request(url + "/v1/adapters", data=body, method="POST")).read()
        after = rss_kib(proc.pid)
        one = throughput(client, 1, 3, args.max_tokens)
        eight = throughput(client, 8, 1, args.max_tokens)
        same, alternating = switch_cost(client, 6, args.max_tokens)
        logged = re.search(r"adapter faq loaded .*?([\d.]+ KiB)", open(log_path).read()).group(1)
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min), {os.cpu_count()} CPUs; "
              f"./serve --workers {args.workers}, max_tokens {args.max_tokens}, greedy")
        print(f"1 client:   {one[0]:.1f} tok/s ({one[1]} tokens in {one[2]:.1f} s)")
        print(f"8 clients:  {eight[0]:.1f} tok/s ({eight[1]} tokens in {eight[2]:.1f} s)")
        print(f"switch:     {same * 1e3:.0f} ms per request with one adapter, {alternating * 1e3:.0f} ms alternating two "
              f"({(alternating - same) * 1e3:+.0f} ms)")
        print(f"adapter:    {logged} of A and B (logged); RSS {before} -> {after} KiB on load (+{after - before} KiB)")
    finally:
        proc.send_signal(2)
        proc.wait(timeout=120)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
