"""`gvu pretrain`: build and train nano-Janus from scratch on the nano world. Resumable; logs to <out>/log.jsonl.

  stage 0  tokenizer (BPE on the world's texts), processor and JanusConfig -> <out>/tokenizer, <out>/config.json
  stage 1  VQ tokenizer (gvu.models.vq_train) on world images                 -> <out>/stage1.pt
  stage 1c the VQ decoder alone, on the frozen encoder's codes               -> <out>/decoder.pt
  stage 1b understanding encoder (vision model) alone, with a patch probe    -> <out>/vision.pt
  stage 2  language model, jointly on understanding (image -> caption, image + question -> answer) and
           generation (prompt -> image tokens, prompt dropout for guidance) -> <out>/stage2.pt
  stage 3  stage 2 continued, with half of the understanding images replaced by their VQ reconstructions
           (encode -> decode, the decoder that makes generated images)        -> <out>/stage3.pt
  final    the whole model directory (safetensors + tokenizer + processor)  -> <out>/model
Each stage checkpoints every `save_every` steps (atomically, as tensors and plain data only); rerunning the same
command continues where it stopped.

Modules, one job each: config (the recipe and its checks), presets (JSON presets in configs/), data (scenes and
batches), measure (probes, ranking loss, reconstruction checks), kernels (speed-only choices), files (stage
checkpoints and the log), image_stages (0, 1, 1c, 1b), lm_stages (2, 3), run (the run folder and the stages in order).
The names below are this package's API.
"""

from gvu.models.pretrain.config import (RUNTIME, SPEED_ONLY, PretrainConfig, check_crop, check_source,
                                        check_vq_source, validate)
from gvu.models.pretrain.data import (RELATIONS, SPATIAL_TAGS, UNDERSTANDING_QUERIES, Stage2Data, decoder_scene,
                                      hard_negatives, mirror_is_train, object_crops, patch_labels, patch_owners,
                                      relation_labels, render, scene_with_extras, stage2_batches, to_pixels,
                                      train_prompt, train_scene)
from gvu.models.pretrain.files import atomic_save, load_stage, log, restore, save_config, trim_log
from gvu.models.pretrain.image_stages import _split_vision_state, stage0, stage1, stage_decoder, stage_vision
from gvu.models.pretrain.kernels import compile_works, use_bf16, use_compile, vq_kernels
from gvu.models.pretrain.lm_stages import lm_stage, stage2, stage3
from gvu.models.pretrain.measure import (PatchProbe, PositionProbe, RelationProbe, ranking_loss, reconstruct_checked,
                                         sequence_logprobs)
from gvu.models.pretrain.presets import PRESETS, load_preset, parse_overrides, preset_names, resolve, resolve_files
from gvu.models.pretrain.run import RunFolder, from_saved, pretrain, run_stages, save_model, vq_checkpoint
from gvu.precision import bf16_is_native
from gvu.world.prompts import HELD_OUT_PAIRS

__all__ = [
    "RUNTIME", "SPEED_ONLY", "PretrainConfig", "check_crop", "check_source", "check_vq_source", "validate",
    "RELATIONS", "SPATIAL_TAGS", "UNDERSTANDING_QUERIES", "Stage2Data", "decoder_scene", "hard_negatives",
    "mirror_is_train", "object_crops", "patch_labels", "patch_owners", "relation_labels", "render",
    "scene_with_extras", "stage2_batches", "to_pixels", "train_prompt", "train_scene",
    "atomic_save", "load_stage", "log", "restore", "save_config", "trim_log",
    "stage0", "stage1", "stage_decoder", "stage_vision", "compile_works", "use_bf16", "use_compile", "vq_kernels",
    "lm_stage", "stage2", "stage3", "PatchProbe", "PositionProbe", "RelationProbe", "ranking_loss",
    "reconstruct_checked", "sequence_logprobs", "PRESETS", "load_preset", "parse_overrides", "preset_names",
    "resolve", "resolve_files", "RunFolder", "from_saved", "pretrain", "run_stages", "save_model", "vq_checkpoint",
    "bf16_is_native", "HELD_OUT_PAIRS", "_split_vision_state",
]
