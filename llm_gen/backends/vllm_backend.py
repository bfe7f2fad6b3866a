"""The `vllm` backend: vLLM's offline engine, every pending prompt in one call.

vLLM is imported only when this backend is built. `vllm.LLM` starts worker
processes, so a script that builds this backend needs an
`if __name__ == "__main__":` guard (the `kdpvlpa` command has one).
"""

from pathlib import Path

from llm_gen.backends.base import (
    BackendError,
    CaptionBackend,
    FailedAnswer,
    chat_template_accepts_system,
    chat_template_digest,
    clean_output,
)


class VLLMBackend(CaptionBackend):
    """Generates with `vllm.LLM.chat`, one `SamplingParams` (and seed) a prompt.

    Args:
        model: str. A local model folder (nothing is downloaded).
        sampling: `SamplingSettings`.
        tensor_parallel_size: int. GPUs one model is split over.
        chat_template: str or None. A Jinja chat template that replaces the
            model's own (for models without one).
        engine_args: dict. More `vllm.LLM` keyword arguments, e.g. `dtype`,
            `max_model_len`, `gpu_memory_utilization`, `kv_cache_memory_bytes`,
            `enforce_eager`.
    """

    name = "vllm"

    def __init__(self, model, sampling=None, tensor_parallel_size=1,
                 chat_template=None, engine_args=None):
        super().__init__(model=model, sampling=sampling)
        folder = Path(str(model)).expanduser()
        if not folder.is_dir():
            # vllm.LLM would take a hub id and try to download it.
            raise BackendError(
                f"--model {model!r} is not a local folder. The vllm backend reads "
                "a model saved on disk (config, tokenizer and weights); nothing "
                "is downloaded."
            )
        try:
            import vllm
        except ImportError as e:
            raise BackendError(
                "The vllm backend needs vLLM: `pip install -e \".[vllm]\"` on a CUDA "
                "machine, or the CPU build as described in llm_gen/README.md "
                f"({type(e).__name__}: {e})."
            ) from e
        self._vllm = vllm
        # Errors about a request, not the engine: the prompt is at fault.
        try:
            from vllm.exceptions import VLLMClientError
        except ImportError:  # older vLLM raised ValueError only
            VLLMClientError = ValueError
        self._refusals = (ValueError, VLLMClientError)
        self.chat_template = chat_template
        self.engine_args = dict(engine_args or {})
        self.tensor_parallel_size = tensor_parallel_size
        try:
            self.llm = vllm.LLM(
                model=str(folder),
                tensor_parallel_size=tensor_parallel_size,
                seed=self.sampling.seed,
                **self.engine_args,
            )
        except Exception as e:
            raise BackendError(f"vLLM could not load {model!r}: {type(e).__name__}: {e}") from e
        try:
            tokenizer = self.llm.get_tokenizer()
            template = chat_template or getattr(tokenizer, "chat_template", None)
            if not template:
                raise BackendError(
                    f"The tokenizer of {model!r} has no chat template; pass one with "
                    "--chat-template FILE."
                )
            self.supports_system_role = chat_template_accepts_system(
                lambda messages: tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True,
                    chat_template=chat_template,
                )
            )
        except BaseException:
            self.close()  # the engine's worker processes do not outlive the error
            raise

    def describe(self):
        fields = super().describe()
        fields["chat_template"] = chat_template_digest(self.chat_template)
        fields["tensor_parallel_size"] = self.tensor_parallel_size
        return fields

    def generate(self, conversations, seeds):
        params = [
            self._vllm.SamplingParams(
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                max_tokens=self.sampling.max_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        try:
            outputs = self.llm.chat(
                list(conversations),
                sampling_params=params,
                use_tqdm=False,
                chat_template=self.chat_template,
            )
        except self._refusals as error:
            # vLLM refuses the whole batch for one bad prompt (say, longer
            # than max_model_len): halve the batch until it is found, so the
            # other prompts still go in large batches.
            if len(conversations) == 1:
                return [FailedAnswer(f"{type(error).__name__}: {error}")]
            half = len(conversations) // 2
            return (self.generate(conversations[:half], seeds[:half])
                    + self.generate(conversations[half:], seeds[half:]))
        return [clean_output(o.outputs[0].text if o.outputs else "") for o in outputs]

    def close(self):
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if shutdown is not None and hasattr(shutdown, "shutdown"):
                shutdown.shutdown()
