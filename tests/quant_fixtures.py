"""A tiny random Llama (built in-process, no checkpoint needed) with the bundled tokenizer."""
import functools

import torch


def tiny_config(**over):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    cfg.update(over)
    return LlamaConfig(**cfg)


def tiny_model(seed=0, **over):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**over)).eval()


@functools.lru_cache(maxsize=1)
def tokenizer():
    from accllm.quant.model import BUNDLED_MODEL, load_tokenizer

    return load_tokenizer(BUNDLED_MODEL)
