"""Captions per second: vLLM batched (`LLM.chat`) against transformers `generate`.

Both engines answer the same STAG prompts (the first VOC-LT training images)
with the same model, greedy, and exactly `--max-tokens` new tokens each
(end-of-sequence ignored), so the work is identical. vLLM's prefix cache is
emptied before each round, so a round does not reuse the previous round's
prompts (within a round, prompts still share their common start, as in
`generate-captions`). Engine start-up and one warm-up round are excluded; the
median over `--repeats` rounds is printed.

Without `--model` a tiny random Llama is built in a temporary folder (nothing
is downloaded), which measures engine overhead more than model compute; give a
real model folder for a meaningful figure.

    python benchmarks/caption_throughput.py                     # tiny random model
    python benchmarks/caption_throughput.py --model models/gemma-2-2b-it \
        --num-prompts 256 --max-tokens 128

Needs vLLM (see llm_gen/README.md); on CPU run it with the vLLM environment's
Python. It runs in one process: vLLM starts its workers itself.
"""

import argparse
import json
import os
import statistics
import tempfile
import time


def _prompts(num_prompts, system_role):
    from llm_gen import build_messages, load_split

    items = load_split("voc_lt").items
    items = [items[i % len(items)] for i in range(num_prompts)]
    return [build_messages(item, system_role=system_role) for item in items]


def _median_rate(fn, repeats, num_prompts):
    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return num_prompts / median, median


def bench_transformers(model, conversations, max_tokens, batch_size, repeats, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(
        model, local_files_only=True, dtype=torch.float32 if device == "cpu" else "auto"
    ).to(device)
    lm.eval()
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]

    def run():
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                inputs = tokenizer(
                    texts[start:start + batch_size], return_tensors="pt",
                    padding=True, add_special_tokens=False,
                ).to(device)
                out = lm.generate(
                    **inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                    do_sample=False, pad_token_id=tokenizer.pad_token_id,
                )
                assert out.shape[1] - inputs["input_ids"].shape[1] == max_tokens

    rate = _median_rate(run, repeats, len(texts))
    del lm
    return rate


def bench_vllm(model, conversations, max_tokens, repeats, engine_args):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, seed=0, **engine_args)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

    def run():
        llm.reset_prefix_cache()  # every round starts cold, as each caption run does
        outputs = llm.chat(conversations, sampling_params=params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == max_tokens for o in outputs)

    return _median_rate(run, repeats, len(conversations))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="Local model folder; default: a tiny random Llama.")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batch-size", type=int, default=None,
                        help="Prompts per transformers generate() call (default: all).")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra vllm.LLM argument (VALUE as JSON when it parses).")
    args = parser.parse_args()

    import torch

    from llm_gen.backends.base import chat_template_accepts_system

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine_args = {"max_model_len": 2048}
    if device == "cpu":
        # The CPU backend reserves most of the memory for its KV cache unless
        # told otherwise; float32 as on the transformers side.
        engine_args.update(dtype="float32", kv_cache_memory_bytes=512 * 1024 * 1024)
    for pair in args.engine_arg:
        key, _, value = pair.partition("=")
        try:
            engine_args[key] = json.loads(value)
        except json.JSONDecodeError:
            engine_args[key] = value

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from llm_gen.testing import build_tiny_chat_model

            model = build_tiny_chat_model(os.path.join(tmp, "tiny-llama"))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        system_role = chat_template_accepts_system(
            lambda m: tokenizer.apply_chat_template(m, tokenize=False,
                                                    add_generation_prompt=True)
        )
        conversations = _prompts(args.num_prompts, system_role)
        hf_rate, hf_s = bench_transformers(
            model, conversations, args.max_tokens,
            args.hf_batch_size or args.num_prompts, args.repeats, device,
        )
        vllm_rate, vllm_s = bench_vllm(
            model, conversations, args.max_tokens, args.repeats, engine_args
        )

    print(f"model {args.model or 'tiny random Llama (2 layers, width 64)'} on {device}; "
          f"{args.num_prompts} prompts x {args.max_tokens} new tokens, "
          f"median of {args.repeats}")
    print(f"  transformers generate  {hf_rate:8.2f} captions/s  ({hf_s:.2f} s a round)")
    print(f"  vLLM LLM.chat batched  {vllm_rate:8.2f} captions/s  ({vllm_s:.2f} s a round)")
    print(f"  ratio vLLM / transformers: {vllm_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()
