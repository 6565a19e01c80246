"""Judges: something that reads an image and a chat request and answers in text.

One interface, two backends:
- `openai:MODEL`: any OpenAI-compatible `/chat/completions` endpoint (the paper's GPT-4.1, or a vLLM / SGLang
  server serving a local VLM). Base URL from OPENAI_BASE_URL (default https://api.openai.com/v1), key from
  OPENAI_API_KEY. A local server (localhost, 127.0.0.1, ::1) needs no key: a dummy one is sent, as vLLM accepts.
- `local:DIR`: a vision-language model in transformers (AutoModelForImageTextToText + AutoProcessor and its chat
  template: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, Gemma 3, LLaVA...), greedy, batched, on a given device.

`judge.stream(requests)` yields `(i, JudgeReply)` as answers arrive (any order), so a scorer can write each verdict
to disk at once. Every reply carries the judge's name ("openai:gpt-4.1@https://api.openai.com/v1",
"local:/abs/dir"). A judge that cannot be reached after its retries raises JudgeError (a UserError): a scorer
never records an unreachable server as the model's failure.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from gvu.errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}  # rate limits, server overload and gateway errors


class JudgeError(UserError):
    """The judge could not answer (unreachable after the retries, a rejected key, a bad model name)."""


@dataclass
class JudgeRequest:
    """One question to a judge: an image (H x W RGB, or None for text only) with a system prompt and user text."""
    image: Image.Image | None
    user: str
    system: str | None = None
    max_tokens: int = 200
    temperature: float = 0.0


@dataclass
class JudgeReply:
    """A judge's answer. `text` is the reply's content; `attempts` counts the HTTP tries it took (1 locally)."""
    text: str
    judge: str
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class JudgeStats:
    """Counters a progress bar shows: requests sent (every try), failed tries, tokens the responses reported."""
    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int = 0, failures: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.failures += failures
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def as_dict(self) -> dict:
        return {"requests": self.requests, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class Judge(Protocol):
    name: str
    stats: JudgeStats
    is_api: bool

    def stream(self, requests: list[JudgeRequest]) -> Iterator[tuple[int, JudgeReply]]:
        """Yield (index into requests, reply) for every request, in any order; raise JudgeError if one cannot be
        answered."""
        ...


# ---------------------------------------------------------------------------------------------- image encoding

def jpeg_base64(image: Image.Image) -> str:
    """The image as a base64 JPEG, as the official GenEval++ script sends it (PIL's default quality, RGB)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_payload(model: str, request: JudgeRequest, image_b64: str | None) -> dict:
    """The /chat/completions body: system message, then the user's text followed by the image (the official
    GenEval++ order)."""
    messages = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    content: list[dict] = [{"type": "text", "text": request.user}]
    if image_b64 is not None:
        content.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image_b64}"}})
    messages.append({"role": "user", "content": content})
    return {"model": model, "messages": messages, "max_tokens": request.max_tokens,
            "temperature": request.temperature}


def redact_images(payload: dict) -> dict:
    """A copy of a payload with each base64 image replaced by its size, for --dry-run."""
    out = json.loads(json.dumps(payload))
    for message in out["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    b64 = url.split(",", 1)[1]
                    part["image_url"]["url"] = (f"data:image/jpeg;base64,<{len(b64)} base64 chars, "
                                                f"{len(b64) * 3 // 4} JPEG bytes>")
    return out


def estimate_image_tokens(width: int, height: int) -> int:
    """OpenAI's published high-detail cost for GPT-4o / GPT-4.1 class models: fit in 2048x2048, shortest side to
    768, then 85 + 170 per 512 px tile. Other models count differently; this is only the printed estimate."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def estimate_text_tokens(text: str) -> int:
    """About 4 characters a token for English text (OpenAI's rule of thumb)."""
    return max(1, len(text) // 4)


# ---------------------------------------------------------------------------------------------- openai backend

def is_local_url(base_url: str) -> bool:
    return (urllib.parse.urlparse(base_url).hostname or "") in LOCAL_HOSTS


def resolve_api_key(base_url: str, env: dict | None = None) -> str:
    """OPENAI_API_KEY, or a dummy key for a server on this machine (vLLM and SGLang accept any); otherwise a
    UserError before any work."""
    env = os.environ if env is None else env
    key = env.get("OPENAI_API_KEY", "")
    if key:
        return key
    if is_local_url(base_url):
        return "EMPTY"
    raise UserError(f"no API key: set OPENAI_API_KEY for the judge endpoint {base_url} "
                    "(or point OPENAI_BASE_URL at a local server, e.g. http://127.0.0.1:8000/v1, which needs none)")


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^attempt capped at `cap`, times a uniform factor in [0.5, 1]."""
    return min(cap, base * 2 ** attempt) * rng.uniform(0.5, 1.0)


class OpenAIJudge:
    """An OpenAI-compatible chat endpoint, called from a thread pool of `concurrency` workers (standard library
    only). Each request gets `1 + retries` tries; 429, 5xx and timeouts are retried after an exponential
    backoff with jitter (or the server's Retry-After); other HTTP errors (401 bad key, 404 unknown model) stop
    the run at once."""

    is_api = True

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 1.0, backoff_cap_s: float = 60.0):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else resolve_api_key(self.base_url)
        self.concurrency, self.timeout_s, self.retries = concurrency, timeout_s, retries
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self.name = f"openai:{model}@{self.base_url}"
        self.stats = JudgeStats()
        self.rng = random.Random(0)
        self.stop = threading.Event()
        self.error: JudgeError | None = None

    def payload(self, request: JudgeRequest) -> dict:
        return chat_payload(self.model, request, None if request.image is None else jpeg_base64(request.image))

    def answer_one(self, request: JudgeRequest) -> JudgeReply:
        return self.ask(self.payload(request))

    def post(self, payload: dict) -> dict:
        """One HTTP try; returns the decoded JSON body or raises urllib's errors."""
        req = urllib.request.Request(
            self.base_url + "/chat/completions", data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def ask(self, payload: dict) -> JudgeReply:
        last = ""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                # another request failed: every request reports that first error
                raise self.error or JudgeError("stopped")
            self.stats.add(requests=1)
            wait_s = None
            try:
                body = self.post(payload)
                text = body["choices"][0]["message"]["content"] or ""
                usage = body.get("usage") or {}
                reply = JudgeReply(text=text, judge=self.name, attempts=attempt + 1,
                                   prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                   completion_tokens=int(usage.get("completion_tokens", 0)))
                self.stats.add(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
                return reply
            except urllib.error.HTTPError as e:
                self.stats.add(failures=1)
                detail = e.read()[:300].decode(errors="replace")
                if e.code not in RETRY_STATUS:
                    raise self.fail(f"judge {self.name} refused the request: HTTP {e.code} {detail.strip()} "
                                    "(check OPENAI_API_KEY, OPENAI_BASE_URL and the model name)") from None
                last = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait_s = min(float(retry_after), self.backoff_cap_s)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                self.stats.add(failures=1)
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                self.stats.add(failures=1)
                last = f"malformed response ({type(e).__name__}: {e})"
            if attempt < self.retries:
                # wait on the stop event, not time.sleep, so that a failed run does not sit out long backoffs
                self.stop.wait(wait_s if wait_s is not None
                               else backoff_seconds(attempt, self.backoff_s, self.backoff_cap_s, self.rng))
        raise self.fail(f"judge {self.name} could not be reached after {self.retries + 1} tries (last: {last}); "
                        "check the server and OPENAI_BASE_URL, then rerun: cached verdicts are kept")

    def fail(self, message: str) -> JudgeError:
        """Record the run's first error and stop the other workers (before the raise, so that no worker starts
        another request meanwhile)."""
        with self.stats.lock:
            if self.error is None:
                self.error = JudgeError(message)
        self.stop.set()
        return self.error

    def stream(self, requests: list[JudgeRequest]) -> Iterator[tuple[int, JudgeReply]]:
        self.stop.clear()
        self.error = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            # the worker encodes the JPEG (PIL releases the GIL), so encoding runs in parallel with the requests
            pending = {pool.submit(self.answer_one, r): i for i, r in enumerate(requests)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = pending.pop(future)
                        yield i, future.result()
            finally:  # an error (or a consumer that stops early): cancel what has not started, stop the rest
                self.stop.set()
                for future in pending:
                    future.cancel()


# ---------------------------------------------------------------------------------------------- local backend

class LocalJudge:
    """A transformers vision-language model: the processor's chat template builds each prompt (system message
    folded into the user turn when the template has no system role), left-padded batches, greedy decoding."""

    is_api = False

    def __init__(self, model, processor, name: str, batch_size: int = 8):
        self.model, self.processor, self.name, self.batch_size = model, processor, name, batch_size
        self.stats = JudgeStats()
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # generation appends on the right of every row

    @classmethod
    def load(cls, directory: str, device: str = "cpu", batch_size: int = 8, dtype: str = "auto") -> LocalJudge:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        processor = AutoProcessor.from_pretrained(directory)
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch_dtype).to(device).eval()
        return cls(model, processor, name=f"local:{os.path.realpath(directory)}", batch_size=batch_size)

    def prompt_text(self, request: JudgeRequest) -> str:
        user = [{"type": "image"}] if request.image is not None else []
        user.append({"type": "text", "text": request.user})
        messages = [{"role": "user", "content": user}]
        if request.system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": request.system}]})
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template without a system role (some raise on it): put the system text first
            if request.system is None:
                raise
            user[-1] = {"type": "text", "text": request.system + "\n\n" + request.user}
            return self.processor.apply_chat_template(messages[1:], add_generation_prompt=True, tokenize=False)

    def generate(self, batch: list[JudgeRequest]) -> list[str]:
        import torch
        texts = [self.prompt_text(r) for r in batch]
        images = [r.image.convert("RGB") for r in batch if r.image is not None]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)  # casts the floating tensors (pixels) only
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max(r.max_tokens for r in batch))
        new_tokens = out[:, inputs["input_ids"].shape[1]:]  # [B, new]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def stream(self, requests: list[JudgeRequest]) -> Iterator[tuple[int, JudgeReply]]:
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            self.stats.add(requests=len(batch))
            for k, text in enumerate(self.generate(batch)):
                yield start + k, JudgeReply(text=text, judge=self.name)


# ---------------------------------------------------------------------------------------------- specs and guards

def parse_judge_spec(spec: str) -> tuple[str, str]:
    """`openai:MODEL` or `local:DIR` -> (kind, target); a UserError that shows both forms otherwise."""
    kind, _, target = (spec or "").partition(":")
    if kind not in ("openai", "local") or not target:
        raise UserError(f"--judge {spec!r}: expected openai:MODEL (an OpenAI-compatible endpoint, e.g. "
                        "openai:gpt-4.1) or local:DIR (a transformers vision-language model directory)")
    if kind == "local" and not os.path.isdir(target):
        raise UserError(f"--judge {spec}: {target} is not a directory (give a local transformers VLM checkpoint)")
    return kind, target


def refuse_self_judging(judge_dir: str, evaluated: Iterable[str]) -> None:
    """A judge directory that is the evaluated model, its base, or inside either would score the model with its
    own understanding: the GvU training reward, not an independent benchmark."""
    judge = os.path.realpath(judge_dir)
    for path in evaluated:
        if not path or not os.path.exists(path):
            continue
        model = os.path.realpath(path)
        if judge == model or judge.startswith(model + os.sep):
            raise UserError(f"--judge local:{judge_dir} is the evaluated model or its base ({path}); a model must "
                            "not judge its own benchmark (that is the GvU reward again): choose another judge")


def build_judge(spec: str, device: str = "cpu", concurrency: int = 8, timeout_s: float = 60.0, retries: int = 5,
                backoff_s: float = 1.0, batch_size: int = 8) -> Judge:
    kind, target = parse_judge_spec(spec)
    if kind == "openai":
        return OpenAIJudge(target, concurrency=concurrency, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    return LocalJudge.load(target, device=device, batch_size=batch_size)
