"""A scripted OpenAI-compatible /chat/completions server on 127.0.0.1, for the judge tests and
benchmarks/judge_speed.py: nothing leaves the machine and every reply is known in advance.

`responder(payload, seen)` decides each reply: `payload` is the request's JSON body and `seen` how many requests
with the same user text arrived so far, this one included (so "429 on the first try, then an answer" is a
two-line script). The server counts every request it receives.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeReply:
    """What the server does with one request: wait `delay_s`, then answer `content` with HTTP `status`."""
    content: str = ""
    status: int = 200
    delay_s: float = 0.0


def user_text(payload: dict) -> str:
    """The text part of the last user message."""
    content = payload["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class FakeChatServer:
    """Use as a context manager: `with FakeChatServer(responder) as server: ... server.base_url ...`."""

    def __init__(self, responder: Callable[[dict, int], FakeReply], latency_s: float = 0.0):
        self.responder, self.latency_s = responder, latency_s
        self.requests: list[dict] = []
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                            "body": body})
                    server.seen[user_text(body)] += 1
                    seen = server.seen[user_text(body)]
                reply = server.responder(body, seen)
                time.sleep(server.latency_s + reply.delay_s)
                if reply.status == 200:
                    data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                               "content": reply.content}}],
                                       "usage": {"prompt_tokens": 100, "completion_tokens": 10}}).encode()
                else:
                    data = json.dumps({"error": {"message": reply.content or "scripted error"}}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

        return Handler

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
