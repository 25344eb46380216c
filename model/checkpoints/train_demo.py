"""Train the demo model: a small Gemma 4 Unified that reads rendered text and transcribes spoken digits.

    python -m model.checkpoints.train_demo OUT_DIR [--seed 0] [--steps N] [--eval-bank DIR]

Same transformers classes as the real model (`Gemma4UnifiedForConditionalGeneration`), the tiny
checkpoint's tokenizer/processor/chat template (model/checkpoints/tiny.py), a larger config, bidirectional
vision off (causal everywhere, so every vLLM attention backend computes it exactly as trained, without
the CPU mm-prefix path of model/cpu_bidirectional.py). Data comes from model/checkpoints/demo_data.py,
generated in DataLoader workers: text lines rendered on the fly, and espeak-ng speech from a bank
synthesized once at the start (or given with `--audio-bank`), augmented on the fly.

Runs on CUDA when torch sees a GPU, else on CPU; bfloat16 autocast where the hardware has it (CUDA,
CPUs with AVX-512 BF16 or AMX), float32 otherwise. The defaults are one run sized for 2 CPU cores and
about an hour. Deterministic for a seed on a given device, thread count and worker count: the
learning-rate schedule follows the step count, never the clock. Prints progress and, at the end,
held-out scores: CER on rendered lines and WER on spoken digit strings, drawn from unseen seeds and texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import time

import numpy as np
import torch

from model.checkpoints import demo_data, tiny
from model.inputs.prompts import DEFAULT_TASKS_FILE

# Decoder sizes (--size). "base" (8.6 M parameters, 17 MB in bfloat16) is the shipped checkpoint's;
# "small" (5.3 M) is the default, sized for one run of about an hour on 2 CPU cores.
TEXT_COMMON = dict(
    head_dim=64,
    global_head_dim=64,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    # Wider than any training prompt (about 100-200 tokens): every layer sees the whole input.
    sliding_window=512,
    initializer_range=0.02,
)
SIZES = {
    "small": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=3, num_key_value_heads=1),
    "base": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2),
}

# Image budget of the demo checkpoint: a rendered line (demo_data.LINE_ASPECT) is one patch row.
DEMO_MAX_SOFT_TOKENS = 70
# Long audio, as the shipped checkpoint declares it (model.inputs.audio_chunks.CheckpointAudio): its
# longest training clips are about 6.5 s (8 digits at 120 wpm slowed 10 % plus lead/tail silence, or
# 8 spliced digit words), so its window is 7 s, one utterance per call (it never saw two strings).
DEMO_AUDIO_FRAMES = 175
DEMO_AUDIO_CHUNKING = "utterance"
EVAL_IMAGE_SEED_OFFSET = 1_000_003  # held-out images come from a seed stream training never uses
TRAIN_BANK_SEED_OFFSET = 1_000_033  # the training speech bank's seed: seed + this (never EVAL_BANK_SEED)
EVAL_BANK_SEED = 7  # held-out speech: `python -m model.checkpoints.demo_data bank DIR --seed 7 --digits 200 --phrases 0`


@dataclasses.dataclass
class TrainConfig:
    out_dir: str
    seed: int = 0
    size: str = "small"  # a key of SIZES
    steps: int = 16000
    batch_size: int = 8
    lr: float = 1.5e-3
    warmup: int = 200
    weight_decay: float = 0.01
    max_minutes: float = 0.0  # safety stop (0: none); the schedule follows the steps regardless
    workers: int = 2
    audio_bank: str | None = None  # a speech bank to train on (else one is synthesized: needs espeak-ng)
    bank_digits: int = 5000  # digit-string clips in the synthesized bank (plus 1/6 as many phrases)
    init_from: str | None = None  # continue from a checkpoint's weights (same config)
    eval_bank: str | None = None
    eval_images: int = 200
    eval_clips: int = 200
    eval_every: int = 0
    save_dtype: str = "bfloat16"
    image_fraction: float = 0.65  # share of training steps that are image batches
    # Share of each modality's batches over which the longest line (12 -> 42 characters) and digit
    # string (3 -> 8 digits) grow to full length: short inputs first, so the model finds the
    # output-to-patch/frame alignment sooner. 0 turns it off.
    curriculum: float = 0.25
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32 (auto: bf16 autocast where the hardware runs it natively)


def build_demo_config(size: str = "small"):
    text = dict(TEXT_COMMON, **SIZES[size])
    dim = text["hidden_size"]
    vision = dict(mm_embed_dim=dim, output_proj_dims=dim, initializer_range=0.02)
    config = tiny.build_config(False, text_overrides=text, vision_overrides=vision)
    config.vision_config.num_soft_tokens = DEMO_MAX_SOFT_TOKENS  # vLLM's default image budget
    return config


def declare_audio(checkpoint: pathlib.Path) -> None:
    """Write the demo's audio window and packing into the checkpoint's processor config (training
    itself uses the tiny processor's 30 s window, so no training clip is ever refused)."""
    path = pathlib.Path(checkpoint) / "processor_config.json"
    config = json.loads(path.read_text())
    config["audio_seq_length"] = DEMO_AUDIO_FRAMES
    config["audio_chunking"] = DEMO_AUDIO_CHUNKING
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_demo_processor():
    processor = tiny.build_processor(tiny.build_tokenizer())
    processor.image_processor.max_soft_tokens = DEMO_MAX_SOFT_TOKENS  # the HF processor's default
    processor.image_seq_length = DEMO_MAX_SOFT_TOKENS
    return processor


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
def encode_prompt(processor, prompt_text: str, modality: str, media, rng: np.random.Generator | None = None):
    """Chat-format prompt with one image or audio part, processed exactly as at inference."""
    media_part = {"type": "image"} if modality == "image" else {"type": "audio"}
    parts = [media_part]
    if prompt_text:
        text_part = {"type": "text", "text": prompt_text}
        # Media first (as the pipeline sends it) most of the time; text first sometimes.
        parts = [text_part, media_part] if rng is not None and rng.random() < 0.3 else [media_part, text_part]
    text = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False)
    kwargs = {"images": [media]} if modality == "image" else {"audio": [media]}
    return processor(text=text, return_tensors="np", **kwargs)


class SampleStream(torch.utils.data.IterableDataset):
    """Endless stream of (encoded prompt, target ids) for one modality; each DataLoader worker
    draws from its own seed so workers never repeat each other."""

    paragraph_prob = 0.0  # lines only: paragraphs need several patch rows (see docs/demo-model.md)

    def __init__(
        self,
        checkpoint_dir: str,
        modality: str,
        seed: int,
        exclude: frozenset[str],
        audio_bank: str | None,
        batch_size: int = 1,
        ramp_batches: int = 0,
    ):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.modality = modality
        self.seed = seed
        self.exclude = exclude
        self.audio_bank = audio_bank
        self.batch_size = batch_size
        self.ramp_batches = ramp_batches

    def __iter__(self):
        from transformers import AutoProcessor

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        n_workers = info.num_workers if info is not None else 1
        rng = np.random.default_rng([self.seed, worker, 0 if self.modality == "image" else 1])
        processor = AutoProcessor.from_pretrained(self.checkpoint_dir)
        eot = tiny.TOKEN_ID["<end_of_turn>"]
        make = self._image if self.modality == "image" else self._audio_maker(rng)
        produced = 0
        while True:
            # The DataLoader hands out whole batches round-robin over its workers, so this worker's
            # k-th batch is the loader's batch k * n_workers + worker: the curriculum is deterministic.
            batch_index = (produced // self.batch_size) * n_workers + worker
            length = min(1.0, batch_index / self.ramp_batches) if self.ramp_batches else 1.0
            media, target, prompt = make(rng, length)
            if target in self.exclude:
                continue
            enc = encode_prompt(processor, prompt, self.modality, media, rng)
            target_ids = processor.tokenizer(target, add_special_tokens=False)["input_ids"] + [eot]
            produced += 1
            yield enc, np.asarray(target_ids, dtype=np.int64)

    def _image(self, rng, length: float = 1.0):
        if self.paragraph_prob:
            text = demo_data.random_text(rng, paragraph_prob=self.paragraph_prob)
        else:
            text = demo_data.random_line(rng, max_chars=round(12 + 30 * length))
        img = demo_data.render_text(text, rng)
        prompts = demo_data.DOCUMENT_PROMPT_VARIANTS
        prompt = prompts[0] if rng.random() < 0.5 else prompts[rng.integers(len(prompts))]
        return img, text, prompt

    def _audio_maker(self, rng):
        # Speech comes from a pre-synthesized bank (train() writes one unless --audio-bank is given):
        # espeak-ng costs about 15 ms a clip, which on 2 cores would take CPU from training. Each
        # clip is drawn many times, never twice alike (augment_audio), and 15 % of samples are new
        # digit strings spliced from the bank's single-word clips.
        clips = demo_data.read_audio_bank(self.audio_bank)
        by_length: dict[int, list[dict]] = {}
        for c in clips:
            if c["kind"] == "digits":
                by_length.setdefault(len(c["text"].split()), []).append(c)
        phrases = [c for c in clips if c["kind"] == "phrase"]
        words: dict[str, list[np.ndarray]] = {}
        for c in clips:  # one list per digit, in the bank's (voice, speed) order for every digit
            if c["kind"] == "word":
                words.setdefault(c["text"], []).append(c["audio"])
        lengths = sorted(by_length)
        prompts = demo_data.TRANSCRIBE_PROMPT_VARIANTS

        def make(rng, length: float = 1.0):
            max_digits = round(3 + 5 * length)
            prompt = prompts[0] if rng.random() < 0.5 else prompts[rng.integers(len(prompts))]
            r = rng.random()
            if r < 0.15 and words:
                audio, text = demo_data.concat_digit_words(words, rng, max_digits)
            elif r < 0.85 or not phrases:
                allowed = [n for n in lengths if n <= max_digits] or lengths[:1]
                pool = by_length[allowed[rng.integers(len(allowed))]]
                clip = pool[rng.integers(len(pool))]
                audio, text = clip["audio"], clip["text"]
            else:
                clip = phrases[rng.integers(len(phrases))]
                audio, text = clip["audio"], clip["text"]
            return demo_data.augment_audio(audio, rng), text, prompt

        return make


def collate(batch):
    """Right-pad prompt+target into one sequence; labels only on target tokens."""
    seqs, label_masks = [], []
    for enc, target in batch:
        ids = np.concatenate([enc["input_ids"][0], target])
        seqs.append(ids)
        label_masks.append(np.r_[np.zeros(len(ids) - len(target), bool), np.ones(len(target), bool)])
    n = max(len(s) for s in seqs)
    input_ids = np.zeros((len(seqs), n), np.int64)
    attn = np.zeros((len(seqs), n), np.int64)
    labels = np.zeros((len(seqs), n), bool)
    mm_types = np.zeros((len(seqs), n), np.int64)
    for i, ((enc, _), s, m) in enumerate(zip(batch, seqs, label_masks)):
        input_ids[i, : len(s)] = s
        attn[i, : len(s)] = 1
        labels[i, : len(s)] = m
        mm = enc["mm_token_type_ids"][0]
        mm_types[i, : len(mm)] = mm
    out = dict(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attn),
        mm_token_type_ids=torch.from_numpy(mm_types),
        label_mask=torch.from_numpy(labels),
    )
    first = batch[0][0]
    if "pixel_values" in first:
        out["pixel_values"] = torch.from_numpy(np.concatenate([e["pixel_values"] for e, _ in batch]))
        out["image_position_ids"] = torch.from_numpy(np.concatenate([e["image_position_ids"] for e, _ in batch]))
    else:
        frames = max(e["input_features"].shape[1] for e, _ in batch)
        feats = np.zeros((len(batch), frames, first["input_features"].shape[2]), np.float32)
        fmask = np.zeros((len(batch), frames), bool)
        for i, (e, _) in enumerate(batch):
            k = e["input_features"].shape[1]
            feats[i, :k] = e["input_features"][0]
            fmask[i, :k] = e["input_features_mask"][0].astype(bool)
        out["input_features"] = torch.from_numpy(feats)
        out["input_features_mask"] = torch.from_numpy(fmask)
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def eval_image_set(n: int, seed: int) -> list[tuple[object, str]]:
    """Held-out rendered single lines: a seed stream training never draws from."""
    rng = np.random.default_rng([seed + EVAL_IMAGE_SEED_OFFSET])
    out = []
    for _ in range(n):
        text = demo_data.random_line(rng)
        out.append((demo_data.render_text(text, rng), text))
    return out


def greedy_read(model, processor, modality: str, media_items: list, device, max_new_tokens: int = 64) -> list[str]:
    """Greedy decoding with transformers (the reference implementation), one batch per call."""
    prompt = demo_data.DOCUMENT_PROMPT if modality == "image" else demo_data.TRANSCRIBE_PROMPT
    part = {"type": "image"} if modality == "image" else {"type": "audio"}
    text = processor.apply_chat_template(
        [{"role": "user", "content": [part, {"type": "text", "text": prompt}]}], add_generation_prompt=True, tokenize=False
    )
    kwargs = {"images": [[m] for m in media_items]} if modality == "image" else {"audio": media_items}
    enc = processor(text=[text] * len(media_items), padding=True, return_tensors="pt", **kwargs)
    enc = {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, enc["input_ids"].shape[1] :]
    return [s.strip() for s in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(model, processor, device, images, audio_clips, batch: int = 32, show: int = 3) -> dict:
    model.eval()
    scores = {}
    if images:
        hyps = []
        for i in range(0, len(images), batch):
            hyps += greedy_read(model, processor, "image", [im for im, _ in images[i : i + batch]], device)
        refs = [t for _, t in images]
        scores["cer_lines"] = demo_data.cer(refs, hyps)
        scores["lines_exact"] = float(np.mean([r == h for r, h in zip(refs, hyps)]))
        for r, h in list(zip(refs, hyps))[:show]:
            print(f"  line ref={r!r}\n       hyp={h!r}", flush=True)
    if audio_clips:
        hyps = []
        for i in range(0, len(audio_clips), batch):
            hyps += greedy_read(model, processor, "audio", [c["audio"] for c in audio_clips[i : i + batch]], device, 32)
        refs = [c["text"] for c in audio_clips]
        scores["wer_digits"] = demo_data.wer(refs, hyps)
        scores["digits_exact"] = float(np.mean([r == h for r, h in zip(refs, hyps)]))
        for r, h in list(zip(refs, hyps))[:show]:
            print(f"  digits ref={r!r} hyp={h!r}", flush=True)
    model.train()
    return scores


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    # oneDNN runs bfloat16 matmuls natively only with AVX-512 BF16 or AMX (about twice float32's speed
    # here); elsewhere it emulates them, slower than float32.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    from transformers import AutoProcessor, Gemma4UnifiedForConditionalGeneration

    t0 = time.time()
    out = pathlib.Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    if cfg.size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, not {cfg.size!r}")
    config = build_demo_config(cfg.size)
    if cfg.init_from:
        model = Gemma4UnifiedForConditionalGeneration.from_pretrained(cfg.init_from, dtype=torch.float32).to(device)
        model.config.vision_config.num_soft_tokens = config.vision_config.num_soft_tokens
    else:
        model = Gemma4UnifiedForConditionalGeneration(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device={device} params={n_params / 1e6:.2f}M", flush=True)
    # Processor + tokenizer first, so workers load exactly what the checkpoint will ship.
    proc_dir = out / "processor"
    build_demo_processor().save_pretrained(proc_dir)
    processor = AutoProcessor.from_pretrained(proc_dir)

    eval_bank = cfg.eval_bank
    if eval_bank is None and cfg.eval_clips and demo_data.espeak_available():
        # The held-out speech of model.checkpoints.demo --evaluate: its own seed, its texts excluded from training.
        eval_bank = demo_data.write_audio_bank(out / "eval_bank", seed=EVAL_BANK_SEED, n_digits=cfg.eval_clips, n_phrases=0)
    eval_audio = []
    if eval_bank:
        eval_audio = [c for c in demo_data.read_audio_bank(eval_bank) if c["kind"] == "digits"][: cfg.eval_clips]
    eval_images = eval_image_set(cfg.eval_images, cfg.seed)
    exclude = frozenset([c["text"] for c in eval_audio] + [t for _, t in eval_images])
    audio_bank = cfg.audio_bank
    if audio_bank is None:
        bank_start = time.time()
        audio_bank = demo_data.write_audio_bank(
            out / "train_bank",
            seed=cfg.seed + TRAIN_BANK_SEED_OFFSET,
            n_digits=cfg.bank_digits,
            n_phrases=cfg.bank_digits // 6,
            words=True,
            exclude=exclude,
            threads=cfg.workers,
        )
        print(f"synthesized the training speech bank in {time.time() - bank_start:.0f} s", flush=True)

    def loader(modality: str, stream_seed: int, workers: int):
        share = cfg.image_fraction if modality == "image" else 1 - cfg.image_fraction
        ramp = int(cfg.curriculum * cfg.steps * share)
        ds = SampleStream(str(proc_dir), modality, stream_seed, exclude, str(audio_bank), cfg.batch_size, ramp)
        return iter(
            torch.utils.data.DataLoader(
                ds,
                batch_size=cfg.batch_size,
                collate_fn=collate,
                num_workers=workers,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
        )

    # Split the workers between the two modalities (images are the dearer ones to make).
    image_workers = (cfg.workers + 1) // 2
    images = loader("image", cfg.seed, image_workers)
    audio = loader("audio", cfg.seed, cfg.workers - image_workers)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )

    bf16 = use_bf16(device, cfg.precision)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    print(f"torch threads={torch.get_num_threads()} workers={cfg.workers} bf16 autocast={bf16}", flush=True)
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else math.inf

    def lr_at(step: int) -> float:
        # Linear warm-up, then cosine decay to 3 % over the steps (never the clock: deterministic).
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses = {"image": [], "audio": []}
    data_wait = 0.0  # seconds the loop waited for the DataLoader workers
    step = 0
    for step in range(cfg.steps):
        # Deterministic interleaving with the requested share of image batches.
        modality = "image" if int((step + 1) * cfg.image_fraction) > int(step * cfg.image_fraction) else "audio"
        wait_start = time.time()
        batch = next(images if modality == "image" else audio)
        data_wait += time.time() - wait_start
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        label_mask = batch.pop("label_mask")
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with autocast:
            logits = model(**batch).logits
        # next-token loss on the target tokens only
        logits = logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = label_mask[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses[modality].append(loss.item())
        if (step + 1) % 100 == 0:
            elapsed = time.time() - t0
            print(
                f"step {step + 1}/{cfg.steps} loss image={np.mean(losses['image'][-50:]):.3f} "
                f"audio={np.mean(losses['audio'][-50:]):.3f} lr={lr_at(step):.2e} {elapsed / 60:.1f} min (data wait {data_wait / 60:.1f} min)",
                flush=True,
            )
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            print(f"eval @ {step + 1}: {evaluate(model, processor, device, eval_images[:64], eval_audio[:64])}", flush=True)
        if time.time() > deadline:
            print(f"--max-minutes reached after {step + 1} of {cfg.steps} steps: stopping early", flush=True)
            break
    train_minutes = (time.time() - t0) / 60

    # Score the weights as they will ship (rounded to the saved dtype).
    save_dtype = getattr(torch, cfg.save_dtype)
    model = model.to(save_dtype).to(torch.float32)
    scores = evaluate(model, processor, device, eval_images, eval_audio)
    print(f"held-out: {json.dumps(scores)}", flush=True)

    ckpt = out / "checkpoint"
    tiny.save_checkpoint(model.to("cpu").to(save_dtype), ckpt, processor=build_demo_processor())
    # Trained on the plain-text document instruction: `auto` must ask it that (model/inputs/prompts.py).
    (ckpt / DEFAULT_TASKS_FILE).write_text(json.dumps(demo_data.DEFAULT_TASKS) + "\n")
    declare_audio(ckpt)
    report = dict(
        steps=step + 1,
        train_minutes=round(train_minutes, 2),
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        size=cfg.size,
        params=n_params,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        image_fraction=cfg.image_fraction,
        curriculum=cfg.curriculum,
        bf16_autocast=bf16,
        torch_threads=torch.get_num_threads(),
        workers=cfg.workers,
        eval_lines=len(eval_images),
        eval_digit_clips=len(eval_audio),
        **scores,
    )
    (ckpt / "demo_training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {ckpt} in {(time.time() - t0) / 60:.1f} min: {json.dumps(report)}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.checkpoints.train_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="working directory; the checkpoint lands in OUT_DIR/checkpoint")
    for field in dataclasses.fields(TrainConfig):
        if field.name == "out_dir":
            continue
        kind = field.type if field.type in ("int", "float") else "str"
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type={"int": int, "float": float}.get(kind, str),
            default=field.default,
        )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(TrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
