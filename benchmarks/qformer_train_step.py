"""Q-Former train step: kdpvlpa (Keras 3, torch backend) against transformers.

One process, the same configuration on both sides (BERT-base sizes: 12
layers, width 768, 12 heads, 32 queries, cross-attention every 2 layers, 197
image tokens of width 768, text length 64, batch 8, float32, dropout 0, 2
threads). A step is: query path and text path forward, the global
contrastive loss (GCL, eq. 1), backward, AdamW update.

Captions are padded to 64 tokens with real lengths drawn from 16 to 64, as
captions of mixed lengths are. kdpvlpa's text path skips the padding
(`kdpvlpa.layers.TokenPacking`); transformers computes it. `--full-text`
makes every caption 64 tokens long, leaving no padding to skip, to show the
rest of the difference.

- kdpvlpa: `DPVLPA.train_on_batch` in phase "pretrain" with QCL off, on
  precomputed image tokens (the encoder is frozen and cached in training).
- reference: `Blip2QFormerModel` (query path) plus `BertModel` (text path)
  with the same heads and loss, in plain PyTorch with
  `torch.optim.AdamW(fused=True)`, the same fused kernel kdpvlpa's AdamW uses
  (`--reference-optimizer default` gives it torch's default AdamW instead).

The two are run alternately; the script prints each side's median step time
and the throughput ratio (reference time / kdpvlpa time; above 1 means
kdpvlpa is faster).

    python benchmarks/qformer_train_step.py --steps 10
    python benchmarks/qformer_train_step.py --steps 10 --full-text
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
# Keras' torch backend puts its tensors on CUDA whenever there is one: pin it to
# --device (read before Keras is imported), so both sides run on one device.
_DEVICE = argparse.ArgumentParser(add_help=False)
_DEVICE.add_argument("--device", default="cpu", help="cpu or cuda")
os.environ["KERAS_TORCH_DEVICE"] = _DEVICE.parse_known_args()[0].device

import kdpvlpa  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from kdpvlpa.models import CLIPVisionEncoder, DPVLPA, QFormerBackbone  # noqa: E402
from kdpvlpa.models.qformer.convert_qformer import load_qformer_tokenizer  # noqa: E402
from kdpvlpa.training.optimizers import AdamW  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[_DEVICE])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--reference-optimizer", default="fused", choices=["fused", "default"],
                        help="torch.optim.AdamW(fused=True) or torch's default AdamW")
    parser.add_argument("--full-text", action="store_true",
                        help="every caption 64 tokens long (no padding to skip)")
    return parser.parse_args()


def make_inputs(args, rng):
    features = rng.normal(size=(args.batch_size, 197, 768)).astype("float32")
    lengths = rng.integers(16, 65, size=args.batch_size)
    if args.full_text:
        lengths[:] = 64
    token_ids = rng.integers(1000, 30000, size=(args.batch_size, 64)).astype("int32")
    mask = np.arange(64)[None, :] < lengths[:, None]
    token_ids[:, 0] = 101
    token_ids[np.arange(args.batch_size), lengths - 1] = 102
    token_ids[~mask] = 0
    return features, token_ids, mask


def build_kdpvlpa(args):
    keras.utils.set_random_seed(0)
    if args.dtype == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    qformer = QFormerBackbone(
        vocabulary_size=30522, num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.hidden, intermediate_dim=args.intermediate, image_dim=768,
        num_query_tokens=32, cross_attention_frequency=2, dropout=0.0,
    )
    # The frozen encoder is not run (the step reads image tokens); one layer
    # keeps its memory small.
    encoder = CLIPVisionEncoder(num_layers=1, feature_layer=-1)
    tokenizer = load_qformer_tokenizer("tiny_random_bert")
    model = DPVLPA(encoder, qformer, tokenizer, ["a"], projection_dim=256)
    optimizer = AdamW(learning_rate=1e-4, weight_decay=0.05)
    model.compile(optimizer=optimizer, phase="pretrain", qcl_weight=0.0)
    return model


class Reference(torch.nn.Module):
    def __init__(self, args):
        super().__init__()
        torch.manual_seed(0)
        common = dict(
            hidden_size=args.hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, intermediate_size=args.intermediate,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        self.qformer = transformers.Blip2QFormerModel(
            transformers.Blip2QFormerConfig(
                cross_attention_frequency=2, encoder_hidden_size=768, **common
            )
        )
        self.bert = transformers.BertModel(
            transformers.BertConfig(**common), add_pooling_layer=False
        )
        self.query_tokens = torch.nn.Parameter(0.02 * torch.randn(1, 32, args.hidden))
        self.ln_vision = torch.nn.LayerNorm(768)
        self.vision_proj = torch.nn.Linear(args.hidden, 256)
        self.text_proj = torch.nn.Linear(args.hidden, 256)
        self.temperature = torch.nn.Parameter(torch.tensor(0.07))

    def forward(self, features, token_ids, mask):
        batch = features.shape[0]
        queries = self.qformer(
            query_embeds=self.query_tokens.expand(batch, -1, -1),
            encoder_hidden_states=self.ln_vision(features),
        ).last_hidden_state
        text = self.bert(input_ids=token_ids, attention_mask=mask).last_hidden_state[:, 0]
        q = F.normalize(self.vision_proj(queries), dim=-1)
        t = F.normalize(self.text_proj(text), dim=-1)
        sim = torch.einsum("ikp,jp->ijk", q, t).amax(-1) / self.temperature.clamp(0.001, 0.5)
        target = torch.arange(batch, device=sim.device)
        return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    features, token_ids, mask = make_inputs(args, rng)

    model = build_kdpvlpa(args)
    x = {"image_features": features, "token_ids": token_ids, "padding_mask": mask}

    device = torch.device(args.device)
    reference = Reference(args).to(device)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-4, weight_decay=0.05,
                                fused=True if args.reference_optimizer == "fused" else None)
    ref_inputs = (
        torch.from_numpy(features).to(device),
        torch.from_numpy(token_ids).long().to(device),
        torch.from_numpy(mask).long().to(device),
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bfloat16" else torch.autocast(device.type, enabled=False)
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def kdpvlpa_step():
        model.train_on_batch(x)

    def reference_step():
        with autocast:
            loss = reference(*ref_inputs)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    times = {"kdpvlpa": [], "reference": []}
    steps = {"kdpvlpa": kdpvlpa_step, "reference": reference_step}
    for i in range(args.warmup + args.steps):
        for name in (("kdpvlpa", "reference") if i % 2 == 0 else ("reference", "kdpvlpa")):
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"config: {args.layers} layers, width {args.hidden}, {args.heads} heads, 32 queries, "
          f"197x768 image tokens, text 64, batch {args.batch_size}, {args.dtype}, "
          f"{args.threads} threads, device {args.device}, {args.steps} timed steps each")
    print(f"caption lengths: {sorted(mask.sum(1).tolist())}; reference optimizer: "
          f"torch AdamW ({args.reference_optimizer})")
    print(f"kdpvlpa   median step: {med['kdpvlpa'] * 1000:8.1f} ms")
    print(f"reference median step: {med['reference'] * 1000:8.1f} ms")
    print(f"throughput ratio kdpvlpa/reference: {med['reference'] / med['kdpvlpa']:.3f}")


if __name__ == "__main__":
    main()
