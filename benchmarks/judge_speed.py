"""Judge throughput: requests/s of the OpenAI-compatible judge against the scripted server on 127.0.0.1 with a fixed
artificial latency (the client's thread pool is what is measured: JPEG encoding, HTTP, JSON), at several
concurrencies; and the time of the local transformers judge on a tiny random Qwen2-VL (CPU). Prints markdown
tables.

Usage: python -m benchmarks.judge_speed [--latency-ms 50] [--concurrency 1 8 32] [--seconds 3] [--image 384]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from PIL import Image

from gvu.eval.fake_server import FakeChatServer, FakeReply
from gvu.eval.genevalpp import SYSTEM_PROMPT
from gvu.eval.judges import JudgeRequest, LocalJudge, OpenAIJudge
from gvu.eval.tiny_vlm import tiny_qwen2_vl


def noise_image(side: int, seed: int) -> Image.Image:
    """Random pixels: the worst case for JPEG size, so the encoding cost is not flattered."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (side, side, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def api_rate(concurrency: int, latency_s: float, seconds: float, side: int) -> tuple[int, float]:
    """(requests, seconds) for enough requests to keep the pool busy about `seconds` at the ideal rate."""
    n = max(16, int(seconds * concurrency / latency_s))
    images = [noise_image(side, k) for k in range(8)]
    requests = [JudgeRequest(image=images[k % 8], user=f"Instruction:\nrequest {k}", system=SYSTEM_PROMPT)
                for k in range(n)]
    reply = FakeReply('{"correct": 1, "reason": "ok"}')
    with FakeChatServer(lambda payload, seen: reply, latency_s=latency_s) as server:
        judge = OpenAIJudge("fake", base_url=server.base_url, api_key="EMPTY", concurrency=concurrency)
        start = time.perf_counter()
        answered = sum(1 for _ in judge.stream(requests))
        elapsed = time.perf_counter() - start
        assert answered == n == server.count
    return n, elapsed


def local_time(n: int, batch_size: int, max_tokens: int) -> tuple[float, float]:
    """(seconds to build the tiny model, seconds to answer n requests) on the CPU."""
    start = time.perf_counter()
    model, processor = tiny_qwen2_vl()
    built = time.perf_counter() - start
    judge = LocalJudge(model, processor, name="local:tiny-qwen2-vl", batch_size=batch_size)
    requests = [JudgeRequest(image=noise_image(64, k), user=f"Is there a cat? {k}", system=SYSTEM_PROMPT,
                             max_tokens=max_tokens) for k in range(n)]
    start = time.perf_counter()
    assert sum(1 for _ in judge.stream(requests)) == n
    return built, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the fake server's delay per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long each concurrency runs")
    parser.add_argument("--image", type=int, default=384, help="image side in pixels (Janus-Pro's 384)")
    parser.add_argument("--local-requests", type=int, default=16)
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch threads {torch.get_num_threads()}")
    print(f"\nOpenAI-compatible judge vs the scripted server on 127.0.0.1, {args.latency_ms:g} ms latency, "
          f"{args.image}x{args.image} noise images as JPEG\n")
    print("| concurrency | requests | seconds | requests/s | ideal (concurrency / latency) |")
    print("|---|---|---|---|---|")
    for c in args.concurrency:
        n, s = api_rate(c, latency, args.seconds, args.image)
        print(f"| {c} | {n} | {s:.2f} | {n / s:.1f} | {c / latency:.0f} |")
    built, s = local_time(args.local_requests, 8, 8)
    print("\nlocal judge: tiny random Qwen2-VL (2 layers, hidden 32), CPU, batch 8, 8 new tokens, "
          "GenEval++ system prompt, 64x64 images\n")
    print("| requests | build s | answer s | s/request |")
    print("|---|---|---|---|")
    print(f"| {args.local_requests} | {built:.2f} | {s:.2f} | {s / args.local_requests:.3f} |")


if __name__ == "__main__":
    main()
