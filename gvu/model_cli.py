"""The model commands: `gvu pretrain`, `gvu train`, `gvu score`. Heavy imports stay inside the command functions."""

from __future__ import annotations

import os
from pathlib import Path

from gvu.config import REDUCTIONS, TOKEN_WEIGHTS
from gvu.errors import UserError
from gvu.settings import layered

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def register_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train nano-Janus from scratch on the nano world (resumable)",
                       description="Build and train nano-Janus: tokenizer, VQ tokenizer (stage 1), VQ decoder (1c), "
                                   "vision encoder (1b), language model on understanding + generation (2 and 3). The "
                                   "recipe is PretrainConfig's defaults (the shipped model's), then --preset, then "
                                   "--config FILE, then --set KEY=VALUE. Rerun the same command to resume.")
    p.add_argument("--preset", default=None,
                   help="a preset: nano (the shipped model's recipe, the defaults; 75 min on a 2-core Xeon with AMX, "
                        "124 on a 2-core EPYC, about 390 on an AVX2-only one; docs give the measurements) or smoke "
                        "(seconds, for tests), from configs/pretrain-NAME.json; or an archived recipe of an earlier "
                        f"model from configs/archive/pretrain-NAME.json "
                        f"({', '.join(preset_names('pretrain-', CONFIG_DIR / 'archive'))})")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON file of PretrainConfig fields, applied after --preset (e.g. "
                        "configs/archive/pretrain-nano-v7.json)")
    p.add_argument("--out", required=True, help="run folder; the model lands in OUT/model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a recipe field (PretrainConfig in gvu/models/pretrain/config.py; repeatable), "
                        "e.g. --set vq_steps=4000 --set lm_steps=3000. The run folder keeps its recipe: a resume "
                        "must give the same changes")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the recipe's, 2); a run may resume under another count")
    p.add_argument("--device", default=None, help="cpu (default) or cuda; data are made on the CPU either way (a run "
                                                   "may resume on another device)")
    p.add_argument("--from-model", default=None, metavar="DIR",
                   help="run only stages 1c and 3 of the recipe, starting from this saved model directory")
    p.add_argument("--vq-from", default=None, metavar="DIR",
                   help="take stage 1 (the VQ tokenizer) from this saved model directory, bit for bit, and train "
                        "every later stage; e.g. a deeper language model on the shipped VQ: --set spec=nano-deep "
                        "--set dec_steps=0 --vq-from models/nano-janus")
    p.set_defaults(func=cmd_pretrain)


def register_train(sub) -> None:
    p = sub.add_parser("train", help="GvU self-training (GRPO with the model's own understanding as reward)",
                       description="Run GvU-GRPO. The config is TrainConfig's defaults, then --preset (configs/NAME.json) "
                                   "or --config FILE, then --set KEY=VALUE overrides (dotted for nested: "
                                   "reward.judge=frozen, sampling.cfg_scale=3). The resolved config is written into the run.")
    p.add_argument("--preset", default=None, help=f"a preset in configs/ ({', '.join(preset_names())})")
    p.add_argument("--config", default=None, help="a JSON file of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint; without --preset or --config its own "
                        "config.json is the base (--set steps=N on top extends it under the constant schedule)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="with --resume: continue from the checkpoint of this step (checkpoints/step_STEP) instead of "
                        "the one checkpoints/latest names (e.g. when the latest is corrupt)")
    p.add_argument("--trust-checkpoint-pickle", action="store_true",
                   help="with --resume: allow a checkpoint of gvu's old format, whose state.pt is a pickle, to be "
                        "unpickled. Unpickling runs any code the file holds: only for runs you made yourself")
    p.set_defaults(func=cmd_train)


def register_score(sub) -> None:
    p = sub.add_parser("score", help="score images with the GvU reward and show per-token diagnostics",
                       description="Score a GenEval folder (or one --image with --prompt) with the GvU intrinsic reward "
                                   "of a model: per-image reward and the log-prob of every prompt token.")
    p.add_argument("folder", nargs="?", help="GenEval folder: <index:05d>/metadata.jsonl + samples/*.png")
    p.add_argument("--image", help="one image file (with --prompt)")
    p.add_argument("--prompt", help="its prompt")
    p.add_argument("--model", default="models/nano-janus")
    p.add_argument("--query", default=None, help='the understanding query (default: "Describe the image in detail.")')
    p.add_argument("--reduction", default="geometric_mean", choices=REDUCTIONS)
    p.add_argument("--token-weights", default="uniform", choices=TOKEN_WEIGHTS,
                   help="uniform (the paper's) or surprisal: weigh each prompt token by -log p(token | blank image)")
    p.add_argument("--out", default=None, help="write per-image results (jsonl) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_score)


# ----------------------------------------------------------------------------------------------- config resolution

def preset_names(prefix: str = "", folder: Path = CONFIG_DIR) -> list[str]:
    """The presets in `folder` (NAME.json for `gvu train`; pretraining's are pretrain-NAME.json, in configs/ and,
    for earlier models' recipes, configs/archive/)."""
    return sorted(x.stem[len(prefix):] for x in folder.glob(f"{prefix}*.json")
                  if prefix or not x.stem.startswith("pretrain-"))


def resolve_train_config(preset: str | None, config: str | None, sets: list[str]):
    """TrainConfig's defaults, then the preset configs/PRESET.json, then the --config file, then the --set items."""
    from gvu.config import TrainConfig

    path = CONFIG_DIR / f"{preset}.json" if preset else None
    if path is not None and not path.exists():
        raise UserError(f"preset {preset}: no such file {path}; presets: {', '.join(preset_names())}")
    return layered(TrainConfig(), [(path, f"preset {preset}"), (config, config)], sets)


# ----------------------------------------------------------------------------------------------- commands

def cmd_pretrain(args) -> None:
    from gvu.models.pretrain import RunFolder, resolve_files, run_stages

    # every user error (a ConfigError) is found here, before any work; an error during the stages keeps its traceback
    cfg = resolve_files(args.preset, args.config, args.set, threads=args.threads, device=args.device,
                        from_model=args.from_model, vq_from=args.vq_from)
    folder = RunFolder(cfg, args.out)
    try:
        path = run_stages(cfg, args.out)
    finally:
        folder.close()
    print(f"model written to {path}")


def train_config_of(args):
    """The config `gvu train` runs: resolve_train_config of the flags, except that `--resume` without --preset or
    --config starts from the run's own config.json, so that `gvu train --out RUN --resume` needs no flag retyped."""
    config = args.config
    if args.resume and args.preset is None and config is None:
        config = os.path.join(args.out, "config.json")
        if not os.path.isfile(config):
            raise UserError(f"--resume: {args.out} holds no run (no config.json); give the --out of a gvu train run")
    return resolve_train_config(args.preset, config, args.set)


def cmd_train(args) -> None:
    from gvu.config import ConfigError

    if (args.resume_from is not None or args.trust_checkpoint_pickle) and not args.resume:
        raise UserError("--resume-from and --trust-checkpoint-pickle go with --resume")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if args.resume_from is not None and args.resume_from < 1:
        raise UserError(f"--resume-from must be a checkpoint's step (>= 1), got {args.resume_from}")
    cfg = train_config_of(args)
    try:
        cfg.validate()
    except ConfigError as e:
        raise UserError(str(e)) from e
    if not os.path.isdir(cfg.model):
        raise UserError(f"model {cfg.model!r} is not a directory: give a local checkpoint folder (nano-Janus, "
                        "Janus-Pro in transformers' format, or X-Omni; --set model=PATH)")
    from gvu.paths import check_output

    # the run folder is never inside, or the same as, what the run reads (a resumed run may hold its own inputs)
    check_output(args.out, [cfg.model, cfg.prompts_file], folder=True, allow_input_inside=args.resume)
    from gvu import dist
    from gvu.train import TrainingDiverged, train

    try:  # train's set-up errors are SetupErrors (UserErrors); a ValueError from its loop is a bug: traceback kept
        summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, resume_from=args.resume_from,
                        trust_pickle=args.trust_checkpoint_pickle)
        dist.barrier()  # every rank is done communicating before any tears its process group down
    except ConfigError as e:
        raise UserError(str(e)) from e
    except TrainingDiverged as e:
        raise UserError(f"training diverged: {e}. The last good checkpoint is in {args.out}/checkpoints; "
                        "a run with a lower lr or a KL term (beta) must start in a new --out") from e
    finally:
        # tear the process group down before the interpreter exits: left to exit-time destructors, gloo's
        # threads can race and abort the process ("terminate called without an active exception")
        dist.cleanup()
    if summary.get("table"):
        print("\nBefore / after GvU (exact evaluator and intrinsic reward):\n" + summary["table"])
    outputs = ("metrics.jsonl", "curves.png", "grids/", "summary.md", "checkpoints/")
    written = [n for n in outputs if os.path.exists(os.path.join(args.out, n))]  # grids and tables may be off
    print(f"\nrun written to {args.out}: {', '.join(written)}")


def cmd_score(args) -> None:
    import numpy as np
    import torch

    from gvu.config import RewardConfig
    from gvu.models.janus import CheckpointError, JanusBackend, check_checkpoint, decoded_image_size
    from gvu.reward import gvu_reward
    from gvu.world import geneval_io as gio

    # every check comes before the model loads (minutes for Janus-Pro-7B)
    if bool(args.folder) == bool(args.image):
        raise UserError("give either a GenEval FOLDER or --image with --prompt")
    if args.folder and args.prompt is not None:
        raise UserError("--prompt goes with --image; a FOLDER's prompts come from its metadata.jsonl files")
    cfg = RewardConfig(reduction=args.reduction, token_weights=args.token_weights,
                       **({"query": args.query} if args.query is not None else {}))
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.image and args.prompt is None:
        raise UserError("--image needs --prompt")
    if args.out:
        gio.refuse_existing_file(Path(args.out), args.overwrite)
    if not os.path.isdir(args.model):
        raise UserError(f"model {args.model!r} is not a directory")
    try:
        size = decoded_image_size(check_checkpoint(args.model))
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if args.image:
        items = [(args.prompt, Path(args.image))]
    else:
        folders = gio.read_folder(args.folder, nano=False)
        items = [(f.metadata["prompt"], p) for f in folders for _, p in f.samples]
    if args.out:
        from gvu.paths import check_output

        check_output(args.out, [args.model] + ([args.image] if args.image else [f.path for f in folders]))
    for _, path in items:
        side = gio.check_image(path)
        if side != size:
            raise UserError(f"{path}: image is {side}x{side}, but model {args.model} reads {size}x{size} images "
                            "(the size it decodes); resize the images")
    try:
        backend = JanusBackend.from_pretrained(args.model)
    except CheckpointError as e:  # damaged weights or tokenizer, found only as they load
        raise UserError(str(e)) from None
    try:  # empty prompts, and prompts that do not fit the model's positions after the image and query
        backend.check_texts(cfg.query, sorted({p for p, _ in items}))
    except ValueError as e:
        raise UserError(str(e)) from None
    rows = []
    for s in range(0, len(items), 32):
        chunk = items[s:s + 32]
        arr = np.stack([np.asarray(gio.load_image(p).convert("RGB"), dtype=np.float32) for _, p in chunk])
        px = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1
        out = gvu_reward(backend, px, [p for p, _ in chunk], cfg)
        tl = out.token_logprobs
        for i, (prompt, path) in enumerate(chunk):
            toks = list(zip(tl.tokens_as_text(backend.tokenizer, i), tl.logprobs[i][tl.mask[i]].tolist()))
            row = {"image": str(path), "prompt": prompt, "reward": float(out.rewards[i]),
                   "tokens": [[t, round(lp, 3)] for t, lp in toks]}
            weights = [] if out.token_weights is None else out.token_weights[i][tl.mask[i]].tolist()
            if weights:
                row["token_weights"] = [float(f"{w:.4g}") for w in weights]  # significant digits: a floor weight (1e-6) stays > 0
            rows.append(row)
            worst = min(toks, key=lambda x: x[1])
            print(f"{out.rewards[i]:.4f}  {path}  {prompt!r}")
            shown = [f"{t.strip() or repr(t)}:{lp:.2f}" + (f" (w {weights[j]:.2f})" if weights else "")
                     for j, (t, lp) in enumerate(toks)]
            print("        " + "  ".join(shown) + f"   (weakest: {worst[0].strip()!r})")
    if args.out:
        gio.write_files_atomic({Path(args.out): gio.jsonl_text(rows)})
