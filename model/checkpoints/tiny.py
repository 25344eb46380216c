"""Build a tiny, deterministic, random-weight Gemma 4 Unified checkpoint in Hugging Face layout.

    python -m model.checkpoints.tiny OUT_DIR [--bidirectional-vision] [--seed N]

Same architecture and file layout as the real 12B checkpoint, scaled down so tests and the demo can
build it offline in seconds: config, safetensors weights (saved by transformers itself, so weight
names are exactly what transformers writes), a byte-level BPE tokenizer with the named special
tokens, the processor (image processor, audio feature extractor, video processor), a chat template
for `text`/`image`/`image_url`/`audio`/`input_audio` content parts, and a generation config.

Nothing here downloads anything: the tokenizer is trained on a few built-in sentences.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from model.registration import ARCHITECTURE

# Special tokens at fixed low ids. Image/audio placeholder strings are the ones vLLM's Gemma 4
# processing uses (`get_placeholder_str`), so plain-text prompts work with vLLM and HF alike.
SPECIAL_TOKENS = [
    "<pad>",  # 0
    "<eos>",  # 1
    "<bos>",  # 2
    "<unk>",  # 3
    "<start_of_turn>",  # 4
    "<end_of_turn>",  # 5
    "<start_of_image>",  # 6  boi
    "<end_of_image>",  # 7  eoi
    "<image_soft_token>",  # 8  image placeholder
    "<start_of_audio>",  # 9  boa
    "<end_of_audio>",  # 10 eoa
    "<audio_soft_token>",  # 11 audio placeholder
    "<|video|>",  # 12 video placeholder (the HF processor adds this name itself)
]
TOKEN_ID = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
NAMED_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
    "boa_token": "<start_of_audio>",
    "eoa_token": "<end_of_audio>",
    "audio_token": "<audio_soft_token>",
    "video_token": "<|video|>",
}

VOCAB_SIZE = 512
MAX_SOFT_TOKENS = 280
AUDIO_SEQ_LENGTH = 750  # 30 s at 40 ms per soft token, as the real checkpoint
SLIDING_WINDOW = 128  # small on purpose: multimodal test prompts exceed it

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice number 4521, total due: 1,250.00 EUR by 2026-12-01.",
    "Transcribe the audio. Read the document and return its text.",
    "Page one of the quarterly report; revenue grew by seven percent.",
    "zero one two three four five six seven eight nine ten",
    "Describe this image in detail. What is written on the page?",
    "Dear customer, thank you for your order #88213 shipped today.",
    "user model system assistant: hello, how can I help you today?",
]

# Chat template: Gemma-style turns; content may be a string or a list of OpenAI-style parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "<start_of_turn>{{ role }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ['image', 'image_url', 'input_image'] -%}<image_soft_token>"
    "{%- elif part['type'] in ['audio', 'input_audio', 'audio_url'] -%}<audio_soft_token>"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<end_of_turn>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\\n' }}{%- endif -%}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    for token, idx in TOKEN_ID.items():
        assert tok.token_to_id(token) == idx, (token, tok.token_to_id(token))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=dict(NAMED_TOKENS),
        model_max_length=1 << 20,
        padding_side="left",
    )


def build_config(bidirectional_vision: bool, *, text_overrides: dict | None = None, vision_overrides: dict | None = None):
    """The tiny config; `*_overrides` replace text/vision config fields (the demo model is larger)."""
    from transformers import Gemma4UnifiedConfig

    hidden = 64
    text_config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,  # full-attention layers use a wider head, as in the real model
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=8192,
        use_bidirectional_attention="vision" if bidirectional_vision else None,
        final_logit_softcapping=30.0,
        pad_token_id=TOKEN_ID["<pad>"],
        eos_token_id=TOKEN_ID["<eos>"],
        bos_token_id=TOKEN_ID["<bos>"],
        initializer_range=0.05,  # 0.02 gives near-tied logits on a random model
    )
    vision_config = dict(
        patch_size=16,
        pooling_kernel_size=3,
        mm_embed_dim=hidden,
        output_proj_dims=hidden,  # must equal mm_embed_dim (the embedder projects mm_embed_dim)
        mm_posemb_size=1120,
        initializer_range=0.05,
    )
    text_config.update(text_overrides or {})
    vision_config.update(vision_overrides or {})
    config = Gemma4UnifiedConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=dict(audio_embed_dim=640),
        boi_token_id=TOKEN_ID["<start_of_image>"],
        eoi_token_id=TOKEN_ID["<end_of_image>"],
        image_token_id=TOKEN_ID["<image_soft_token>"],
        video_token_id=TOKEN_ID["<|video|>"],
        boa_token_id=TOKEN_ID["<start_of_audio>"],
        eoa_token_index=TOKEN_ID["<end_of_audio>"],
        audio_token_id=TOKEN_ID["<audio_soft_token>"],
        initializer_range=0.05,  # 0.02 gives near-tied logits on a random model
    )
    config.architectures = [ARCHITECTURE]
    # vLLM reads the default image budget from `vision_config.num_soft_tokens` (HF does not define it).
    config.vision_config.num_soft_tokens = MAX_SOFT_TOKENS
    return config


def build_processor(tokenizer):
    from transformers import Gemma4UnifiedProcessor
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor,
    )
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
        Gemma4UnifiedImageProcessor,
    )
    from transformers.models.gemma4_unified.video_processing_gemma4_unified import (
        Gemma4UnifiedVideoProcessor,
    )

    return Gemma4UnifiedProcessor(
        feature_extractor=Gemma4UnifiedAudioFeatureExtractor(),
        image_processor=Gemma4UnifiedImageProcessor(max_soft_tokens=MAX_SOFT_TOKENS),
        tokenizer=tokenizer,
        video_processor=Gemma4UnifiedVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MAX_SOFT_TOKENS,
        audio_seq_length=AUDIO_SEQ_LENGTH,
    )


def build(out_dir: str | pathlib.Path, *, bidirectional_vision: bool = False, seed: int = 0) -> pathlib.Path:
    """Write the checkpoint to `out_dir` and return its path. Same seed -> identical files."""
    import torch
    from transformers import Gemma4UnifiedForConditionalGeneration

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config(bidirectional_vision)
    torch.manual_seed(seed)
    model = Gemma4UnifiedForConditionalGeneration(config).to(torch.float32).eval()
    # Random LayerNorm/RMSNorm scales: with the default ones the vision path is nearly constant
    # and parity tests could not tell a wrong patch order or position from a right one.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "ln1.weight", "ln2.weight", "pos_norm.weight")):
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))
            elif name.endswith("pos_embedding"):
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    return save_checkpoint(model, out)


def save_checkpoint(model, out_dir: str | pathlib.Path, processor=None) -> pathlib.Path:
    """Write `model` (a Gemma4UnifiedForConditionalGeneration built from `build_config`) with the
    tokenizer, processor (default: `build_processor`), chat template and generation config: a
    complete checkpoint directory."""
    from transformers import GenerationConfig

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # save_pretrained writes the Python class name; the checkpoint names the project's architecture
    # so that vLLM runs the project's class through the plugin.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = [ARCHITECTURE]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    special_ids = sorted(TOKEN_ID[t] for t in SPECIAL_TOKENS if t not in ("<eos>", "<end_of_turn>"))
    GenerationConfig(
        bos_token_id=TOKEN_ID["<bos>"],
        eos_token_id=[TOKEN_ID["<eos>"], TOKEN_ID["<end_of_turn>"]],
        pad_token_id=TOKEN_ID["<pad>"],
        do_sample=False,
        # A random model would otherwise emit placeholder ids, which HF and vLLM embed differently.
        suppress_tokens=special_ids,
    ).save_pretrained(out)

    processor = processor or build_processor(build_tokenizer())
    processor.save_pretrained(out)
    # vLLM and older loaders read the template from tokenizer_config.json too.
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.checkpoints.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--bidirectional-vision",
        action="store_true",
        help='set use_bidirectional_attention="vision" (the real checkpoint\'s setting)',
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.out_dir, bidirectional_vision=args.bidirectional_vision, seed=args.seed)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
