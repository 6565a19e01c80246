"""What a run writes: resolved config, metrics (jsonl, + TensorBoard when installed), sample grids, tables, plots."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
from PIL import Image, ImageDraw

from gvu.atomic import write_text
from gvu.reward import to_uint8


def write_config(run_dir: str, cfg) -> None:
    save_json(run_dir, "config.json", asdict(cfg))


def save_json(run_dir: str, name: str, obj) -> None:
    """run_dir/name written whole or not at all: a temporary file, flushed to disk, renamed into place (the one
    atomic JSON writer of `gvu train` and `gvu pretrain`)."""
    write_text(os.path.join(run_dir, name), json.dumps(obj, indent=1, default=lambda o: None))


class MetricsLog:
    """metrics.jsonl (one JSON object per line, namespaced keys) and TensorBoard scalars when available."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.lines = sum(1 for _ in open(self.path)) if os.path.exists(self.path) else 0
        self.last_eval = "-"
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        except Exception:  # tensorboard not installed: jsonl only
            self.tb = None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1
        if "eval/overall" in record:
            self.last_eval = f"{record['eval/overall']:.3f}"
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def truncate(self, step: int) -> None:
        """On resume: drop lines written after the checkpoint's step (they will be written again)."""
        self.lines = truncate_jsonl(self.path, step)


def whole_records(lines) -> list[tuple[str, dict]]:
    """(line, record) for each whole jsonl record, each line ending in a newline; a line cut short by a crash
    mid-write is dropped."""
    out = []
    for ln in lines:
        try:
            out.append((ln if ln.endswith("\n") else ln + "\n", json.loads(ln)))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: str, step: int) -> int:
    """Keep the lines of a jsonl file whose "step" is at most `step` (on resume, the later ones are written again);
    returns how many lines are kept. A missing file is left missing."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        keep = [ln for ln, r in whole_records(f) if r.get("step", 0) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)  # a crash here leaves the old file whole
    return len(keep)


def save_grid(path: str, pixels, prompts: list[str], per_prompt: int, scale: int = 2) -> None:
    """Rows = prompts (text on the left), columns = images; pixels [len(prompts)*per_prompt, 3, H, W]."""
    imgs = to_uint8(pixels)
    h = imgs.shape[1] * scale
    label_w = 340
    canvas = Image.new("RGB", (label_w + per_prompt * (h + 4), len(prompts) * (h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, p in enumerate(prompts):
        draw.text((4, r * (h + 4) + h // 2 - 6), p[:58], fill=(0, 0, 0))
        for c in range(per_prompt):
            im = Image.fromarray(imgs[r * per_prompt + c]).resize((h, h), Image.NEAREST)
            canvas.paste(im, (label_w + c * (h + 4), r * (h + 4)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)


def before_after_table(before: dict, after: dict) -> str:
    lines = ["| split | tag | exact before | exact after | reward before | reward after |", "|---|---|---|---|---|---|"]
    for split in before:
        b, a = before[split], after[split]
        rb, ra = b.get("reward_per_tag", {}), a.get("reward_per_tag", {})
        for tag in b.get("per_tag", {}):
            rew = f"{rb[tag]:.4f} | {ra[tag]:.4f}" if tag in rb and tag in ra else " | "
            lines.append(f"| {split} | {tag} | {b['per_tag'][tag]:.3f} | {a['per_tag'][tag]:.3f} | {rew} |")
        lines.append(f"| {split} | **overall** | **{b['overall']:.3f}** | **{a['overall']:.3f}** | "
                     f"{b['reward']:.4f} | {a['reward']:.4f} |")
    lines.append("\n(overall: the exact score is the mean of the tags' scores, as GenEval reports it; the reward is the "
                 "mean over all images)")
    return "\n".join(lines)


def plot_curves(run_dir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"))]
    train = [r for r in rows if "reward/mean" in r]
    evals = [r for r in rows if "eval/overall" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        steps = np.array([r["step"] for r in train])
        rew = np.array([r["reward/mean"] for r in train])
        k = max(1, len(rew) // 20)
        ax[0].plot(steps, rew, alpha=0.3, label="batch")
        ax[0].plot(steps[k - 1:], np.convolve(rew, np.ones(k) / k, "valid"), label=f"mean of {k}")
        ax[0].set(title="training reward", xlabel="step")
        ax[0].legend()
    if evals:
        ax[1].plot([r["step"] for r in evals], [r["eval/overall"] for r in evals], "o-", label="exact (eval split)")
        ax2 = ax[1].twinx()
        ax2.plot([r["step"] for r in evals], [r["eval/reward"] for r in evals], "s--", color="C1", label="intrinsic reward")
        ax[1].set(title="evaluation", xlabel="step", ylabel="nano-GenEval overall")
        ax2.set_ylabel("GvU reward")
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
