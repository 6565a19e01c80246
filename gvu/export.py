"""`gvu export RUN [--step N] --out DIR`: a trained run as a standalone checkpoint in transformers' format.

The run's base model with the checkpoint's weights applied (LoRA adapters merged into the base weights with peft's
merge_and_unload; full fine-tuned weights copied in), saved with save_pretrained, next to the base model's tokenizer,
processor and generation config, the backend settings the run used (gvu_backend.json), the run's training config
(gvu_train_config.json), where it came from (gvu_export.json) and a short model card (README.md). So
`JanusForConditionalGeneration.from_pretrained(DIR)` and `gvu generate --model DIR` load it without gvu's run folder.

The folder is written under a tmp name beside --out and renamed into place at the end: --out is either as it was
or complete. An existing --out is replaced only under --overwrite, and only if it is an earlier export.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from gvu.errors import UserError

# the base model's files that travel with the weights (tokenizer, processor, generation settings); the weights and
# config.json come from save_pretrained, gvu_backend.json from the loaded backend's settings
CARRIED_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "processor_config.json", "preprocessor_config.json", "chat_template.json",
                 "chat_template.jinja", "generation_config.json")
EXPORT_FILE = "gvu_export.json"


def check_out(out: Path, overwrite: bool, inputs: tuple[str, ...]) -> None:
    """Refuse a file, a folder holding this export's own inputs, an existing folder without --overwrite, and any
    existing folder that is not an earlier export (its files are the user's)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the exported model")
    for inp in inputs:
        if Path(os.path.realpath(inp)).is_relative_to(os.path.realpath(out)):
            raise UserError(f"--out {out} holds this export's own input {inp}; pick another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} already exists; pass --overwrite to replace it, or pick another --out")
        if not (out / EXPORT_FILE).exists():
            raise UserError(f"--out {out} is not an earlier `gvu export` (no {EXPORT_FILE}); refusing to replace it "
                            "even with --overwrite: remove it yourself or pick another --out")


def final_metrics(run_dir: str, step: int) -> dict:
    """The last training metrics and the last evaluation at or before `step` (metrics.jsonl)."""
    from gvu.run_io import whole_records

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [r for _, r in whole_records(f) if r.get("step", 0) <= step]
    train = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    out = {}
    if train:
        out["train"] = {k: v for k, v in train[-1].items() if k in ("step", "reward/mean", "reward/std", "loss/total")}
    if evals:
        out["eval"] = evals[-1]
    return out


def model_card(name: str, run_dir: str, step: int, cfg, metrics: dict, summary: str | None) -> str:
    """A short README.md: what the model is, how it was trained, its last metrics, how to load it."""
    method = (f"LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, merged into the base weights" if cfg.lora_r > 0
              else "full fine-tuning of the generation path")
    sampling = ", ".join(f"{k}={v}" for k, v in vars(cfg.sampling).items() if k != "seed")
    lines = [
        f"# {name}",
        "",
        f"A GvU fine-tune of `{cfg.model}`: GRPO on image tokens with the model's own understanding as the reward "
        "(\"Learning to Generate via Understanding\", arXiv 2603.06043), exported by `gvu export`.",
        "",
        f"- Base model: `{cfg.model}`",
        f"- Run: `{run_dir}`, checkpoint at step {step} of {cfg.steps}",
        f"- Training: {method}; lr {cfg.lr}, {cfg.batch_prompts} prompts x {cfg.group_size} images a step, "
        f"reward {cfg.reward.kind} (judge {cfg.reward.judge}, {cfg.reward.reduction}), KL beta {cfg.beta}, "
        f"dtype {cfg.dtype}",
        f"- Prompts: {cfg.prompts_file or f'nano-world suite {cfg.suite}, split {cfg.train_split}'}",
        f"- Sampling during training: {sampling}",
        "- The full training config: gvu_train_config.json",
        "",
        "## Metrics at export (the run's metrics.jsonl)",
        "",
    ]
    if not metrics:
        lines.append("The run logged no metrics up to this step.")
    for part, record in metrics.items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        lines.append(f"- {'last training step' if part == 'train' else 'last evaluation'}: {shown}")
    if summary:
        lines += ["", "Before / after table of the run (summary.md):", "", summary.strip()]
    lines += ["", "## Load", "", "```python", "from transformers import JanusForConditionalGeneration",
              f'model = JanusForConditionalGeneration.from_pretrained("{name}")', "```", "",
              f"or sample a benchmark folder: `gvu generate --model {name} --prompts PROMPTS --out DIR`", ""]
    return "\n".join(lines)


def merged_model(backend):
    """The backend's model with LoRA merged into the base weights (peft's merge_and_unload), or as it is when the run
    fine-tuned the weights themselves."""
    peft_model = getattr(backend, "peft_model", None)
    return peft_model.merge_and_unload() if peft_model is not None else backend.model


def export_run(run_dir: str, step: int | None, out: str | Path, overwrite: bool = False, device: str = "cpu") -> Path:
    """Write the run's checkpoint (default: its latest) as a standalone model folder at `out`; returns it."""
    from gvu.atomic import replace_folder
    from gvu.generate import versions, run_ref
    from gvu.models.janus import resolve_checkpoint
    from gvu.models.registry import XOMNI, model_type
    from gvu.train import load_trained, read_run_config

    out = Path(out)
    ref = run_ref(run_dir, step)  # the run, its step and its base model, checked before any weights load
    cfg = read_run_config(run_dir)
    base = resolve_checkpoint(cfg.model)
    if model_type(base) == XOMNI:  # its folder also names a FLUX decoder and a SigLIP-VQ tokenizer outside the LM
        raise UserError(f"gvu export writes Janus checkpoints; {run_dir} trained X-Omni ({cfg.model}), which it does "
                        "not export yet: sample the run itself with `gvu generate --run`")
    check_out(out, overwrite, (run_dir, base))
    backend = load_trained(run_dir, ref.step, device=device)
    model = merged_model(backend)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        for name in CARRIED_FILES:
            if os.path.exists(os.path.join(base, name)):
                shutil.copyfile(os.path.join(base, name), tmp / name)
        backend.config.save(str(tmp))  # the settings the run sampled and scored with, whatever the base declared
        shutil.copyfile(os.path.join(run_dir, "config.json"), tmp / "gvu_train_config.json")
        record = {"run": os.path.realpath(run_dir), "step": ref.step, "base_model": cfg.model,
                  "lora_merged": cfg.lora_r > 0, "dtype": cfg.dtype, "versions": versions()}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1) + "\n")
        summary_path = os.path.join(run_dir, "summary.md")
        summary = (Path(summary_path).read_text() if ref.step == cfg.steps and os.path.exists(summary_path) else None)
        (tmp / "README.md").write_text(model_card(out.name, run_dir, ref.step, cfg, final_metrics(run_dir, ref.step),
                                                  summary))
        check_out(out, overwrite, (run_dir, base))  # again: --out may have changed while the model loaded
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
