"""What a change to the exact evaluator does to a model's scores: the same generated images judged by the evaluator
of this checkout and by the one at a git revision.

The images are nano_model_eval.py's generation benchmark (the 553 eval-split prompts of nano-GenEval, 4 images each,
its sampling settings and seeds), so the "now" column is that benchmark's score under this checkout's evaluator.
Prints both scores per tag and every verdict that changed; with --out, also a picture of the changed images.
Only gvu/world/evaluator.py is taken from REV: what it imports (GenEval's rules, the renderer's shape templates, the
vocabulary) comes from this checkout, so a change to those files is not compared, and REV's evaluator must still
import against them.

Usage: python -m benchmarks.evaluator_change --against REV [--model models/nano-janus] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
from collections import defaultdict

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def evaluator_at(rev: str):
    """gvu/world/evaluator.py as it was at git revision rev, imported as a module of its own."""
    try:
        src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:gvu/world/evaluator.py"], check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise ValueError(f"--against {rev}: git cannot show gvu/world/evaluator.py there ({e.stderr.strip()})") from e
    path = os.path.join(tempfile.mkdtemp(), "evaluator_then.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("evaluator_then", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="git revision whose evaluator to compare with (e.g. HEAD~1)")
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--prompts", type=int, default=None, help="eval prompts to use (default: all 553)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write changes.json and changed.png here")
    args = ap.parse_args()
    try:
        then = evaluator_at(args.against)
    except ValueError as e:
        ap.error(str(e))
    if not os.path.exists(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: not a saved model directory (no config.json)")

    import numpy as np
    import torch
    from tqdm import tqdm

    from gvu.config import SamplingConfig
    from gvu.measure import summarise
    from gvu.models.janus import JanusBackend
    from gvu.reward import to_uint8
    from gvu.world.evaluator import evaluate_image
    from gvu.world.prompts import make_suite

    torch.set_num_threads(args.threads)
    b = JanusBackend.from_pretrained(args.model)
    md = make_suite("geneval", "eval", seed=0)[:args.prompts]
    rows = [m for m in md for _ in range(4)]
    sampling, batch = SamplingConfig(seed=1234), 64  # nano_model_eval.py's generation benchmark
    now, before, changed = defaultdict(list), defaultdict(list), []
    for s in tqdm(range(0, len(rows), batch), desc="generation"):
        chunk = rows[s:s + batch]
        with torch.no_grad():
            tok = b.sample_image_tokens([m["prompt"] for m in chunk], SamplingConfig(**{**sampling.__dict__, "seed": sampling.seed + s}))
        for i, (m, img) in enumerate(zip(chunk, to_uint8(b.decode_images(tok)))):
            a, o = evaluate_image(m, img), then.evaluate_image(m, img)
            now[m["tag"]].append(a.correct)
            before[m["tag"]].append(o.correct)
            if a.correct != o.correct:
                changed.append({"row": s + i, "tag": m["tag"], "prompt": m["prompt"], "then": o.correct, "now": a.correct,
                                "reason_now": a.reason, "image": img})
    then_s, now_s = summarise(before), summarise(now)
    print(f"\n{len(rows)} images of {args.model}; evaluator of this checkout against {args.against}\n")
    print(f"| tag | score at {args.against} | score now | verdicts changed (wrong -> right / right -> wrong) |")
    print("|---|---:|---:|---:|")
    for tag in sorted(now):
        up = sum(1 for c in changed if c["tag"] == tag and c["now"])
        down = sum(1 for c in changed if c["tag"] == tag and not c["now"])
        print(f"| {tag} | {then_s['per_tag'][tag]:.3f} | {now_s['per_tag'][tag]:.3f} | {up} / {down} |")
    print(f"| **overall** | {then_s['overall']:.3f} | {now_s['overall']:.3f} | "
          f"{sum(c['now'] for c in changed)} / {sum(not c['now'] for c in changed)} |")
    for c in changed:
        print(f"- row {c['row']} ({c['tag']}) {c['prompt']!r}: {'right' if c['then'] else 'wrong'} -> "
              f"{'right' if c['now'] else 'wrong'} ({c['reason_now']})")
    if args.out:
        from PIL import Image

        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "changes.json"), "w") as f:
            json.dump({"against": args.against, "model": args.model, "then": then_s, "now": now_s,
                       "changed": [{k: v for k, v in c.items() if k != "image"} for c in changed]}, f, indent=1)
        if changed:
            scale, per_row = 3, 8
            tiles = [Image.fromarray(np.asarray(c["image"])).resize((64 * scale, 64 * scale), Image.NEAREST) for c in changed]
            sheet = Image.new("RGB", (64 * scale * min(per_row, len(tiles)), 64 * scale * ((len(tiles) - 1) // per_row + 1)), "white")
            for k, t in enumerate(tiles):
                sheet.paste(t, (64 * scale * (k % per_row), 64 * scale * (k // per_row)))
            sheet.save(os.path.join(args.out, "changed.png"))
        print(f"\nwritten: {args.out}/changes.json" + (f", {args.out}/changed.png (in the order listed)" if changed else ""))


if __name__ == "__main__":
    main()
