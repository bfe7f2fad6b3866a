"""A tiny random chat model on disk, for tests and the throughput benchmark.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a few
sentences with the `tokenizers` library, given a chat template, and saved
beside a Llama model with random weights. Its answers are noise, which is what
the tests need to see retries and the fallback. transformers and tokenizers
are imported only when the function runs.
"""

import os

from llm_gen.prompt import SYSTEM_PROMPT

# Chat template with a system role (Llama-like) and one that rejects it
# (Gemma-like), so both prompt layouts can be exercised.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_TEMPLATE_NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    SYSTEM_PROMPT,
    "Generate a detailed scene description based on: caption and labels.",
    "First describe the tail classes, then the other objects. Mark every mention "
    "of a tail class with <tail> and </tail>. Answer with the description only.",
    "A man crouches on a <tail>surfboard</tail> in the water, keeping his balance.",
    "person bicycle car bus train boat bird cat dog horse sheep cow bottle chair "
    "dining table potted plant sofa tv monitor aeroplane motorbike",
]


def build_tiny_chat_model(directory, system_role=True, num_layers=2, hidden_dim=64,
                          seed=0):
    """Save a tiny random Llama chat model and its tokenizer in `directory`.

    Args:
        directory: path-like. Created if missing.
        system_role: bool. False gives a chat template that rejects system
            messages, as Gemma's does.
        num_layers: int. Decoder layers.
        hidden_dim: int. Model width; heads are 32 wide (vLLM's CPU attention
            supports head sizes from 32 up).
        seed: int. Seed of the random weights.

    Returns:
        The directory, as a str.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE if system_role else CHAT_TEMPLATE_NO_SYSTEM
    tokenizer.save_pretrained(directory)

    head_dim = 32
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_dim,
        intermediate_size=2 * hidden_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_dim // head_dim),
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory
