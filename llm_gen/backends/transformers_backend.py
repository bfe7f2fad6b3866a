"""The `transformers` backend: batched `generate`, for machines without vLLM.

transformers and torch are imported only when this backend is built.
"""

from llm_gen.backends.base import (
    BackendError,
    CaptionBackend,
    chat_template_accepts_system,
    chat_template_digest,
    clean_output,
)


class TransformersBackend(CaptionBackend):
    """Generates with `AutoModelForCausalLM.generate`, left-padded batches.

    Sampling in a batch shares one random stream, so the seed of a batch is
    its first prompt's seed: the answers depend on how prompts are batched.

    Args:
        model: str. A local model folder (nothing is downloaded).
        sampling: `SamplingSettings`.
        batch_size: int. Prompts in one `generate` call.
        device: str or None. `"cpu"`, `"cuda"`, ...; None picks CUDA if present.
        dtype: str. `"auto"`, `"float32"`, `"bfloat16"`, `"float16"`.
        chat_template: str or None. Replaces the tokenizer's chat template.
    """

    name = "transformers"

    def __init__(self, model, sampling=None, batch_size=8, device=None,
                 dtype="auto", chat_template=None):
        super().__init__(model=model, sampling=sampling)
        try:
            import torch
            import transformers
        except ImportError as e:
            raise BackendError(
                f"The transformers backend needs torch and transformers ({e})."
            ) from e
        self._torch = torch
        self.batch_size = max(1, int(batch_size))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, str(dtype), None)
        if not (torch_dtype == "auto" or isinstance(torch_dtype, torch.dtype)):
            raise BackendError(
                f"--dtype {dtype!r} is not a torch dtype; use auto, float32, bfloat16 "
                "or float16."
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                model, local_files_only=True
            )
            self.lm = transformers.AutoModelForCausalLM.from_pretrained(
                model, local_files_only=True, dtype=torch_dtype
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise BackendError(f"transformers could not load {model!r}: {e}") from e
        try:
            self.lm = self.lm.to(self.device)
        except (RuntimeError, AssertionError) as e:  # torch: a device it lacks
            raise BackendError(
                f"transformers could not put {model!r} on device {self.device!r}: {e}"
            ) from e
        self.lm.eval()
        self.chat_template = chat_template  # --chat-template, or None
        if chat_template:
            self.tokenizer.chat_template = chat_template
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(
                f"The tokenizer of {model!r} has no chat template; pass one with "
                "--chat-template FILE."
            )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.supports_system_role = chat_template_accepts_system(self._render)

    def _render(self, messages):
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def describe(self):
        fields = super().describe()
        fields["chat_template"] = chat_template_digest(self.chat_template)
        fields["device"] = self.device
        return fields

    def generate(self, conversations, seeds):
        torch = self._torch
        answers = []
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start:start + self.batch_size]
            texts = [self._render(messages) for messages in batch]
            inputs = self.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            torch.manual_seed(seeds[start])
            sample = self.sampling.temperature > 0
            kwargs = dict(
                max_new_tokens=self.sampling.max_tokens,
                do_sample=sample,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if sample:
                kwargs.update(temperature=self.sampling.temperature, top_p=self.sampling.top_p)
            with torch.no_grad():
                output = self.lm.generate(**inputs, **kwargs)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            answers.extend(
                clean_output(t)
                for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            )
        return answers
