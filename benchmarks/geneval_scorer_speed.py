"""Seconds per image of `gvu eval --scorer geneval` with full-size random weights: Mask2Former Swin-S (GenEval's
detector's architecture, 100 queries, 80 classes) and CLIP ViT-L/14, on a synthetic GenEval folder of 512x512
images (the resolution most GenEval models sample at, resized by the detector to 800x800).

Random weights detect nothing reliably, so the class head is biased towards one class ("dog") to make every prompt
reach the colour step; the timing covers the detector, the instance post-processing, CLIP crops and the rules.
Scores from random weights mean nothing. Prints a table row: seconds per image (a 1 + N image folder minus a
1 image folder, so model loading cancels out), the time to load and score one image, and the projection to
GenEval's 2,212 images (553 prompts x 4).
Usage: python -m benchmarks.geneval_scorer_speed [--images 4] [--device cpu] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from gvu.eval.geneval.scorer import score_folder
from gvu.world import geneval_io as gio

PROMPT = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}


def save_models(root: Path) -> tuple[Path, Path]:
    from transformers import (CLIPConfig, CLIPModel, CLIPTokenizer, Mask2FormerConfig,
                              Mask2FormerForUniversalSegmentation, SwinConfig)

    names = gio.COCO_CLASS_NAMES
    swin = SwinConfig(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=80, id2label=dict(enumerate(names)),
                            label2id={n: i for i, n in enumerate(names)})
    det = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        det.class_predictor.bias[names.index("dog")] = 10.0
    det.save_pretrained(str(root / "det"))
    chars = list("abcdefghijklmnopqrstuvwxyz-")
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    text = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=14)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))
    clip.save_pretrained(str(root / "clip"))
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(root / "clip"))
    return root / "det", root / "clip"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        det, clip = save_models(root)
        for name, n in (("one", 1), ("many", 1 + args.images)):
            for i in range(n):
                gio.write_prompt_folder(root / name, i, PROMPT, [Image.effect_noise((512, 512), 64).convert("RGB")])
        score_folder(root / "one", root / "warm", det, clip, args.device, 1, progress=False)  # warm-up
        times = {}
        for name in ("one", "many"):  # each call loads the models: the difference is the images' own time
            start = time.perf_counter()
            score_folder(root / name, root / f"out-{name}", det, clip, args.device, args.batch_size, progress=False)
            times[name] = time.perf_counter() - start
    per = (times["many"] - times["one"]) / args.images
    print("| device | images timed | s/image | load + 1 image (s) | GenEval's 2,212 images |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {args.device} | {args.images} | {per:.2f} | {times['one']:.1f} | {2212 * per / 3600:.2f} h |")


if __name__ == "__main__":
    main()
