"""Tiny random models and an offline tokenizer for the tests (nothing is downloaded)."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    FalconConfig,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "I lost my keys on the train and walked home in the rain.",
    "She laughed at the puppy chasing its tail across the garden.",
    "The meeting moved to Thursday at ten in room four.",
    "He slammed the door and shouted that nobody ever listens.",
    "We sat by the lake and watched the sun go down slowly.",
    "My hands shook as the doctor opened the envelope with the results.",
    "You are a helpful assistant. Answer briefly and kindly.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]


@functools.cache
def tokenizer(vocab_size: int = 300, chat_template: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    if chat_template:
        fast.chat_template = CHATML
    return fast


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=None)


def configs(vocab: int = 300) -> dict:
    """One tiny config per decoder architecture the engine must map."""
    c = _common(vocab)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
    return {
        "llama": LlamaConfig(**small, num_key_value_heads=2, max_position_embeddings=256, **c),
        "qwen2": Qwen2Config(**small, num_key_value_heads=2, max_position_embeddings=256, **c),
        "qwen3": Qwen3Config(**small, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, **c),
        "mistral": MistralConfig(**small, num_key_value_heads=2, max_position_embeddings=256, sliding_window=None, **c),
        "phi3": Phi3Config(
            **small,
            num_key_value_heads=4,
            max_position_embeddings=256,
            pad_token_id=None,
            vocab_size=vocab,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "gemma2": Gemma2Config(
            **small, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=64, **c
        ),
        "falcon": FalconConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
            alibi=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "gpt2": GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
        ),
        "gpt_neox": GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


ARCHS = list(configs())


def model(arch: str, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = configs()[arch]
    m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return m.eval()


def bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertModel(cfg).eval()
