"""Reading a model folder's files with errors that help: JSON files (config.json, gvu_backend.json, tokenizer.json,
weight indexes) and safetensors headers. Every failure is a CheckpointError that names the file, says what is wrong
with it and how to fix it, so that a damaged model folder never ends in a traceback."""

from __future__ import annotations

import json
import os


class CheckpointError(ValueError):
    """A checkpoint directory that gvu cannot load; the message says what is wrong and how to fix it."""


def one_line(e: Exception, limit: int = 200) -> str:
    """An exception as one short line (transformers' messages run over many lines)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def read_json_file(path: str, what: str, fix: str):
    """A JSON file of a checkpoint, or a CheckpointError that names it, says what is wrong and how to fix it."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e.strerror or e}); {fix}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: {what} is not text (binary or damaged); {fix}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno}"
                              f"{', the file is empty' if e.pos == 0 else ''}); {fix}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} nests JSON too deeply; {fix}") from None


def check_safetensors(path: str) -> None:
    """Read a safetensors file's header (8 bytes of length, then JSON) and check that the file is as long as the
    header says: a truncated or garbled weights file fails here, before anything loads."""
    fix = "the file is damaged or incomplete: copy or download the checkpoint again"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, 100 << 20):
                raise ValueError("no valid header")
            header = json.loads(f.read(n).decode("utf-8"))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the weights ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); {fix}") from None
    if size != 8 + n + end:
        raise CheckpointError(f"{path}: {size} bytes, but its header describes {8 + n + end}; {fix}")
