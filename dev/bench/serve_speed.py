#!/usr/bin/env python3
"""./serve's decode speed on one device, with the standard library only (no
openai package: the GPU machine has no network).

Starts ./serve --device DEVICE on MODEL with the given adapters, then:
  1. one client: REQUESTS requests one after another (alternating the adapters,
     or the base when there are none);
  2. 8 clients at once, REQUESTS requests each;
and prints completion tokens / wall time for each, the mean latency, and
./serve's start-up lines (the device, the GPU memory of the base and of each
adapter). dev/gpu/gpu_check.sh's serve stage runs it for cuda and for cpu.

    python3 dev/bench/serve_speed.py --device cuda [--model PATH] [--adapter NAME=DIR ...]
        [--workers N] [--max-tokens N] [--requests N] [--serve PATH]
"""
import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

PROMPT = "What is Debian? Answer in a few sentences."


def start_server(args, log_path):
    command = [args.serve, "--device", args.device, "--model", args.model, "--port", "0",
               "--workers", str(args.workers), "--queue", "64"]
    for adapter in args.adapter:
        command += ["--adapter", adapter]
    log = open(log_path, "w")
    proc = subprocess.Popen(command, stderr=log)
    for _ in range(3000):
        time.sleep(0.1)
        text = open(log_path).read()
        found = re.search(r"listening on (http://\S+)", text)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            sys.exit("serve exited:\n" + text)
    proc.kill()
    sys.exit("serve did not start in 300 s")


def complete(url, model, max_tokens):
    """One greedy /v1/completions request: (completion tokens, seconds)."""
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.time()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.load(response)
    return answer["usage"]["completion_tokens"], time.time() - start


def run_clients(url, models, n_clients, n_requests, max_tokens):
    """n_clients threads, n_requests each: (tokens, wall seconds, mean latency)."""
    results, lock = [], threading.Lock()

    def client(index):
        for i in range(n_requests):
            done = complete(url, models[(index + i) % len(models)], max_tokens)
            with lock:
                results.append(done)

    start = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - start
    tokens = sum(r[0] for r in results)
    return tokens, wall, sum(r[1] for r in results) / len(results)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--serve", default="./serve", help="the binary (build/cuda_on_cpu/plain/serve: the emulation)")
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR, as ./serve's")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4)
    args = parser.parse_args()
    log_path = f"/tmp/serve_speed_{args.device}.log"
    proc, url = start_server(args, log_path)
    try:
        with urllib.request.urlopen(url + "/v1/models") as response:
            listed = [m["id"] for m in json.load(response)["data"]]
        models = listed[1:] or listed[:1]   # the adapters, else the base
        complete(url, models[0], 4)         # warm-up
        for n_clients in (1, 8):
            tokens, wall, latency = run_clients(url, models, n_clients, args.requests, args.max_tokens)
            print(f"serve --device {args.device} --workers {args.workers}: {n_clients} client(s) x {args.requests} "
                  f"requests, models {','.join(models)}: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s, "
                  f"mean latency {latency:.2f} s")
    finally:
        proc.terminate()
        proc.wait()
    for line in open(log_path):
        if "device" in line or ("adapter" in line and "loaded" in line) or "listening" in line:
            print("  " + line.rstrip())


if __name__ == "__main__":
    main()
