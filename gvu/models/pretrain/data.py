"""Pretraining data: training scenes and prompts (held-out compositions never appear), the probes' per-patch
targets, and stage-2 batches (Stage2Data), made ahead of time in worker processes when asked."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from gvu.models import nano
from gvu.world.prompts import HELD_OUT_PAIRS, make_prompt, split_of
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import SUITES

if TYPE_CHECKING:
    from gvu.models.pretrain.config import PretrainConfig

# the tags whose prompts state where objects are (a relation between two objects, or regions of the image)
SPATIAL_TAGS: dict[str, tuple[str, ...]] = {"geneval": ("position",),
                                            "genevalpp": ("color_spatial_attr", "size_spatial_attr", "spatial_count_attr")}


def train_prompt(rng: random.Random, tags: dict[str, tuple[str, ...]] | None = None,
                 balanced: bool = False) -> tuple[str, dict]:
    """(suite, a random prompt from that suite's train split); held-out compositions never appear.
    tags: draw only from these {suite: tags} (default: every tag of every suite).
    balanced: also redraw a spatial prompt whose relation edit (perturb's mirror) is not a train prompt
    (PretrainConfig.balanced_relations)."""
    pool = tags or SUITES
    while True:
        suite = rng.choice(list(pool))
        m = make_prompt(suite, rng.choice(pool[suite]), rng)
        if "train" in split_of(m, suite) and not (balanced and not mirror_is_train(m, suite)):
            return suite, m


def mirror_is_train(metadata: dict, suite: str) -> bool:
    """Whether a prompt's relation edit ("A left of B" -> "A right of B"; regions swapped) is a train prompt too;
    True for a prompt with no relation. Training on only such spatial prompts leaves the text alone no hint of
    which way a relation goes: for each "A left of B" it also sees "A right of B"."""
    from gvu.world.perturb import perturb

    edit = perturb(metadata, "relation", random.Random(0))  # a relation edit draws nothing from the rng
    return edit is None or "train" in split_of(edit, suite)


def train_scene(rng: random.Random, with_suite: bool = False, spatial: bool = False, extra: float = 0.0,
                balanced: bool = False, spatial_suite: str = ""):
    """(prompt metadata, scene) for training: scenes avoid held-out colour-shape pairs altogether.
    with_suite: (suite, metadata, scene). spatial: the prompt comes from SPATIAL_TAGS.
    extra: the chance that a non-spatial scene also holds 1-2 objects of shapes the prompt does not name
    (PretrainConfig.und_extra); 0 draws nothing from rng, so the other scenes of the stream do not depend on it.
    balanced: see train_prompt. spatial_suite: a spatial prompt comes from this suite only ("": either)."""
    tags = ({spatial_suite: SPATIAL_TAGS[spatial_suite]} if spatial_suite else SPATIAL_TAGS) if spatial else None
    suite, m = train_prompt(rng, tags, balanced)
    scene = None
    if extra and not spatial and rng.random() < extra:
        scene = scene_with_extras(m, rng)
    if scene is None:
        scene = sample_scene(m, rng, forbid=HELD_OUT_PAIRS)
    return (suite, m, scene) if with_suite else (m, scene)


def decoder_scene(rng: random.Random, small: float = 0.0, held_out: bool = False):
    """A stage-1c training scene: train_scene's, with every object made small with chance `small` (PretrainConfig.
    dec_small). The objects keep their places, so they still do not overlap. With small 0 nothing more is drawn from
    rng, so the rest of the stream does not depend on it. held_out (PretrainConfig.dec_held_out): the colours the prompt
    leaves open are drawn from all colours, held-out colour-shape pairs included (the train prompt names none)."""
    if held_out:
        scene = sample_scene(train_prompt(rng)[1], rng)
    else:
        scene = train_scene(rng)[1]
    if small and rng.random() < small:
        scene = replace(scene, objects=tuple(replace(o, size="small") for o in scene.objects))
    return scene


def scene_with_extras(metadata: dict, rng: random.Random):
    """A scene for `metadata` plus 1-2 objects of shapes it does not name, or None when they do not fit (or the
    prompt would no longer hold)."""
    from gvu.world.rules import judge_scene
    from gvu.world.sampler import UnsatisfiableError
    from gvu.world.vocab import MAX_OBJECTS, SHAPES

    named = {r["class"] for r in metadata["include"]}
    room = MAX_OBJECTS - sum(int(r["count"]) for r in metadata["include"])
    free = [s for s in SHAPES if s not in named]
    k = min(rng.choice((1, 2)), room, len(free))
    if k < 1:
        return None
    extras = [{"class": s, "count": 1} for s in rng.sample(free, k)]
    try:
        scene = sample_scene({**metadata, "include": metadata["include"] + extras}, rng, forbid=HELD_OUT_PAIRS)
    except UnsatisfiableError:
        return None
    return scene if judge_scene(metadata, list(scene.objects), scene.image_size).correct else None


def hard_negatives(suite: str, metadata: dict, scene, rng: random.Random, k: int = 3) -> list[str]:
    """Up to k minimal edits of a true prompt (one colour, count, shape or relation changed) that are false for the
    scene and are themselves train-split prompts: no edit is an eval or held-out prompt text.
    For a counting prompt whose scene holds other objects too, the edit that names the scene's total count comes
    first ("four stars" for three stars and a heart): it is what a judge that counts objects, not stars, prefers."""
    from gvu.world.perturb import distractors, perturb
    from gvu.world.rules import judge_scene
    from gvu.world.vocab import MAX_COUNT

    ok = lambda d: split_of(d, suite) in ("train", "train+eval")  # noqa: E731
    out = []
    inc = metadata["include"]
    if len(inc) == 1 and inc[0]["count"] >= 2 and inc[0]["count"] < len(scene.objects) <= MAX_COUNT:
        d = perturb(metadata, "count", rng, count=len(scene.objects))
        if d and ok(d) and not judge_scene(d, list(scene.objects), scene.image_size).correct:
            out.append(d["prompt"])
    out += [d["prompt"] for d in distractors(metadata, scene, k, rng) if ok(d) and d["prompt"] not in out]
    return out[:k]


def patch_owners(scene, grid: int) -> np.ndarray:
    """[grid, grid] int: the index in scene.objects of the object covering most of each vision patch (at least 30% of
    it), -1 for background."""
    from gvu.world.scene import shape_coverage

    p = scene.image_size / grid
    best = np.full((grid, grid), 0.3, np.float32)
    owner = np.full((grid, grid), -1, np.int64)
    for i, o in enumerate(scene.objects):
        r = o.radius(scene.image_size) / p
        cov = shape_coverage(o.shape, o.x / p, o.y / p, r, r, grid, grid)
        win = cov > best
        best = np.where(win, cov, best)
        owner[win] = i
    return owner


def patch_labels(scene, grid: int) -> torch.Tensor:
    """[3, grid*grid] long: the shape, colour and size class (0 = background) of the object covering most of each
    vision patch (at least 30% of it). Targets of the auxiliary probe on the vision features."""
    from gvu.world.vocab import COLOR_NAMES, SHAPES, SIZES

    owner = patch_owners(scene, grid)
    lab = np.zeros((3, grid, grid), np.int64)
    for i, o in enumerate(scene.objects):
        for k, v in enumerate((SHAPES.index(o.shape), COLOR_NAMES.index(o.color), SIZES.index(o.size))):
            lab[k][owner == i] = v + 1
    return torch.from_numpy(lab.reshape(3, -1))


RELATIONS = ("left of", "right of", "above", "below")


def relation_labels(scene, grid: int) -> torch.Tensor:
    """[4, grid*grid] float: for each patch of an object in a two-object scene, 1 for each of RELATIONS that its
    object stands in to the other object (GenEval's relative_position, as the evaluator judges it), else 0; -1 (no
    target) on background patches and in scenes of any other number of objects. Targets of the relation probe."""
    from gvu.world.rules import Detection, relative_position

    lab = np.full((len(RELATIONS), grid, grid), -1.0, np.float32)
    if len(scene.objects) == 2:
        owner = patch_owners(scene, grid)
        dets = [Detection.from_obj(o, scene.image_size) for o in scene.objects]
        for i in range(2):
            rels = relative_position(dets[i], dets[1 - i])
            for k, rel in enumerate(RELATIONS):
                lab[k][owner == i] = float(rel in rels)
    return torch.from_numpy(lab.reshape(len(RELATIONS), -1))


def to_pixels(images: list) -> torch.Tensor:
    """PIL images -> float [B, 3, H, W] in [-1, 1] (the VQ's and the image processor's range)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def object_crops(pixels: torch.Tensor, scenes: list, size: int, rng: random.Random) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size]: for each image, a crop around one of its scene's objects (drawn by rng),
    its centre moved by up to size/4 pixels each way and the crop kept inside the image."""
    h, w = pixels.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"a {size}x{size} crop does not fit in {h}x{w} images")
    crops = []
    for img, scene in zip(pixels, scenes):
        o = rng.choice(scene.objects)
        cx, cy = o.x + rng.uniform(-size / 4, size / 4), o.y + rng.uniform(-size / 4, size / 4)
        left = min(max(int(round(cx - size / 2)), 0), w - size)
        top = min(max(int(round(cy - size / 2)), 0), h - size)
        crops.append(img[:, top:top + size, left:left + size])
    return torch.stack(crops)


UNDERSTANDING_QUERIES = ("What is in the image?", "List the objects in the image.")


class Stage2Data:
    """Builds stage-2 batches: generation (prompt -> image tokens) and understanding (image + query -> answer)."""

    def __init__(self, tokenizer, spec, cfg: PretrainConfig, rng: random.Random, recon: float = 0.0, seed_base: int = 3):
        from gvu.models.janus_format import JanusTemplate

        self.tok, self.spec, self.cfg, self.rng = tokenizer, spec, cfg, rng
        self.recon, self.seed_base = recon, seed_base  # stage 3: its reconstruction share and its own data seeds
        self.template = JanusTemplate()
        self.ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in
                    {"bos": nano.BOS, "eos": nano.EOS, "pad": nano.PAD, "boi": nano.BOI}.items()}
        self.und_prefix: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tok(text).input_ids  # adds BOS

    def answer(self, text: str) -> list[int]:
        return self.tok(" " + text, add_special_tokens=False).input_ids + [self.ids["eos"]]

    def generation(self) -> tuple:
        """-> (prompt Batch [B, T], pixels [B, 3, H, W] to encode into image tokens); prompt_dropout of the rows are
        unconditional."""
        from gvu.models.janus_format import left_pad, unconditional

        pairs = [train_scene(self.rng) for _ in range(self.cfg.gen_batch)]
        prompt = left_pad([self.encode(self.template.generation(m["prompt"])) for m, _ in pairs], self.ids["pad"])
        drop = torch.tensor([self.rng.random() < self.cfg.prompt_dropout for _ in pairs])
        uncond = unconditional(prompt.ids, prompt.mask, self.ids["bos"], self.ids["boi"], self.ids["pad"])
        prompt.ids = torch.where(drop[:, None], uncond, prompt.ids)
        return prompt, to_pixels([render(s) for _, s in pairs])

    def prefix(self, query: str) -> list[int]:
        if query not in self.und_prefix:
            self.und_prefix[query] = self.encode(self.template.understanding(query, self.spec.num_image_tokens))
        return self.und_prefix[query]

    def spatial(self) -> bool:
        """Whether the next row draws a spatial prompt (spatial_share); draws nothing when the share is 0, so
        the rest of the stream does not depend on it."""
        return bool(self.cfg.spatial_share) and self.rng.random() < self.cfg.spatial_share

    def understanding(self) -> tuple[list, list, list]:
        """-> (sequences, answer lengths, scenes): image + query -> answer rows."""
        from gvu.world.captions import REWARD_QUERY, describe, questions

        seqs, answer_lens, scenes = [], [], []
        for _ in range(self.cfg.und_batch):
            if self.spatial():  # a spatial prompt, answered to the reward's query by the prompt itself
                m, scene = train_scene(self.rng, spatial=True, balanced=self.cfg.balanced_relations,
                                       spatial_suite=self.cfg.spatial_suite)
                query, ans = REWARD_QUERY, m["prompt"]
            else:
                _, scene = train_scene(self.rng, extra=self.cfg.und_extra)
                u = self.rng.random()
                if u < 0.5:  # the reward's own query, with varied true answers
                    query, ans = REWARD_QUERY, describe(scene, self.rng, self.rng.choice(("geneval", "geneval", "full", "partial")),
                                                     train_only=self.cfg.caption_train_only)
                elif u < 0.6:
                    query, ans = self.rng.choice(UNDERSTANDING_QUERIES), describe(scene, self.rng, "full")
                else:
                    _, query, ans = questions(scene, self.rng, 1)[0]
            a = self.answer(ans)
            seqs.append(self.prefix(query) + a)
            answer_lens.append(len(a))
            scenes.append(scene)
        return seqs, answer_lens, scenes

    def ranking(self) -> tuple[list, list, list, list[int]]:
        """-> (sequences, answer lengths, scenes, group sizes): for each of rank_images images, its true prompt
        under the reward's query followed by up to 3 minimal edits of it (perturb.distractors; only edits that are
        themselves train-split prompts, so no row here is an eval or held-out prompt text)."""
        from gvu.world.captions import REWARD_QUERY

        seqs, answer_lens, scenes, groups = [], [], [], []
        while len(groups) < self.cfg.rank_images:
            suite, m, scene = train_scene(self.rng, with_suite=True, spatial=self.spatial(), extra=self.cfg.und_extra,
                                          balanced=self.cfg.balanced_relations, spatial_suite=self.cfg.spatial_suite)
            edits = hard_negatives(suite, m, scene, self.rng)
            if not edits:
                continue
            groups.append(1 + len(edits))
            for text in [m["prompt"]] + edits:
                a = self.answer(text)
                seqs.append(self.prefix(REWARD_QUERY) + a)
                answer_lens.append(len(a))
                scenes.append(scene)
        return seqs, answer_lens, scenes, groups

    def batch(self, seqs: list, answer_lens: list, scenes: list) -> tuple:
        """-> (Batch [B, T], labels [B, T] with -100 outside answers, pixel_values [B, 3, H, W], patch labels [B, 3, N],
        reconstruct [B] bool (rows to show as VQ reconstructions; None without stage 3's share), objects: per row the
        sorted (shape, colour) pairs of its scene, which a reconstruction must still show to be used)."""
        from gvu.models.janus_format import left_pad

        batch = left_pad(seqs, self.ids["pad"])
        labels = torch.full_like(batch.ids, -100)
        for i, k in enumerate(answer_lens):
            labels[i, -k:] = batch.ids[i, -k:]
        images = {id(sc): render(sc) for sc in scenes}  # ranking rows share their scene: draw each once
        grid = int(round(self.spec.num_image_tokens ** 0.5))
        aux = None
        if self.cfg.aux_weight:
            labels_of = {id(sc): patch_labels(sc, grid) for sc in scenes}
            aux = torch.stack([labels_of[id(sc)] for sc in scenes])
        recon = objects = None
        if self.recon:  # drawn per scene, so a ranking group's rows share one image
            flag = {id(sc): self.rng.random() < self.recon for sc in scenes}
            recon = torch.tensor([flag[id(sc)] for sc in scenes])
            objects = [sorted((o.shape, o.color) for o in sc.objects) for sc in scenes]
        return batch, labels, to_pixels([images[id(sc)] for sc in scenes]), aux, recon, objects

    def reseed(self, k: int) -> None:
        """Start step k's data stream: every step draws from a seed of its own."""
        self.rng = random.Random((self.cfg.seed + self.seed_base) * 1_000_003 + k)

    def step(self, k: int) -> dict:
        """Every input of stage-2 step k, made on the CPU from a seed of its own (so batches do not depend on how
        many worker processes make them, and a resumed run sees the same data)."""
        self.reseed(k)
        prompt, gen_pixels = self.generation()
        seqs, lens, scenes = self.understanding()
        n_und, groups = len(seqs), []
        if self.cfg.rank_images:  # one understanding pass: the plain rows, then the ranking rows
            r_seqs, r_lens, r_scenes, groups = self.ranking()
            seqs, lens, scenes = seqs + r_seqs, lens + r_lens, scenes + r_scenes
        und, labels, pixels, patch, recon, objects = self.batch(seqs, lens, scenes)
        grid = int(round(self.spec.num_image_tokens ** 0.5))
        rel = torch.stack([relation_labels(sc, grid) for sc in scenes]) if self.cfg.rel_weight else None
        return {"prompt": prompt, "gen_pixels": gen_pixels, "und": und, "labels": labels, "pixels": pixels,
                "patch": patch, "rel": rel, "n_und": n_und, "groups": groups, "recon": recon, "objects": objects}


_WORKER_DATA: "Stage2Data | None" = None


def _worker_init(tok_dir: str, cfg: PretrainConfig, recon: float, seed_base: int) -> None:
    global _WORKER_DATA
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    _WORKER_DATA = Stage2Data(AutoTokenizer.from_pretrained(tok_dir), nano.SPECS[cfg.spec], cfg, random.Random(),
                              recon, seed_base)


def _worker_step(k: int) -> dict:
    return _WORKER_DATA.step(k)


def stage2_batches(data: Stage2Data, tok_dir: str, cfg: PretrainConfig, start: int, steps: int):
    """Yield data.step(k) for k = start .. steps-1; with cfg.data_workers > 0 they are made ahead of time in
    worker processes (a bounded window), which keeps a GPU busy. Same batches either way."""
    if not cfg.data_workers:
        for k in range(start, steps):
            yield data.step(k)
        return
    import collections
    import multiprocessing as mp

    # fork, as torch's DataLoader does on Linux: the workers only render and tokenize (no CUDA, one thread each)
    with mp.get_context("fork").Pool(cfg.data_workers, initializer=_worker_init,
                                     initargs=(tok_dir, cfg, data.recon, data.seed_base)) as pool:
        window = collections.deque()
        nxt = start
        while nxt < steps and len(window) < 4 * cfg.data_workers:
            window.append(pool.apply_async(_worker_step, (nxt,)))
            nxt += 1
        while window:
            batch = window.popleft().get()
            if nxt < steps:
                window.append(pool.apply_async(_worker_step, (nxt,)))
                nxt += 1
            yield batch
