"""`kdpvlpa generate-captions` and `kdpvlpa captions {stats,merge}`.

`kdpvlpa/cli.py` registers every command in `COMMANDS`. Nothing heavy is
imported here: a backend imports its engine only when it is built.
"""

import contextlib
import json
import sys

import click

from kdpvlpa.utils.files import describe_os_error, read_text
from kdpvlpa.utils.progress import Progress
from llm_gen.backends import BACKENDS, BackendError, SamplingSettings, make_backend
from llm_gen.generate import Shard, generate_captions, run_settings
from llm_gen.records import CaptionFileError, read_records
from llm_gen.splits import PACKAGED_DATASETS, SplitError, load_split
from llm_gen.stats import caption_stats, format_stats, merge_shards


def _parse_engine_args(pairs):
    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{pair!r} is not KEY=VALUE", param_hint="--engine-arg"
            )
        try:
            args[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            args[key.strip()] = value
    return args


def _read_chat_template(path):
    if path is None:
        return None
    try:
        return read_text(path, "The chat template", click.BadParameter)
    except click.BadParameter as e:
        e.param_hint = "--chat-template"
        raise


@contextlib.contextmanager
def _reported_as_click_errors():
    """Bad caption files, backends that cannot run and files that cannot be
    read or written end the command with one line, not a traceback."""
    try:
        yield
    except (CaptionFileError, BackendError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(describe_os_error(e)) from None


def _load_split_or_fail(dataset, split_file, original_captions, no_original=False):
    try:
        return load_split(
            dataset=dataset,
            split_file=split_file,
            original_captions=original_captions,
            use_original_captions=not no_original,
        )
    except SplitError as e:
        raise click.ClickException(str(e)) from None


_DATASET = click.option(
    "--dataset",
    type=click.Choice(PACKAGED_DATASETS),
    help="A split packaged with kdpvlpa.",
)
_SPLIT_FILE = click.option(
    "--split-file",
    type=click.Path(dir_okay=False),
    help="A train split JSON in the packaged format (overrides --dataset).",
)


# Options that only some backends read. Given on the command line to another
# backend they would be silently ignored (say a sampling setting with the
# template backend, when --model was forgotten), so they are refused.
_BACKEND_OPTIONS = {
    "tensor_parallel_size": ("vllm",),
    "engine_args": ("vllm",),
    "chat_template": ("vllm", "transformers"),
    "dtype": ("transformers",),
    "device": ("transformers",),
    "micro_batch_size": ("transformers",),
    "base_url": ("openai",),
    "api_key": ("openai",),
    "concurrency": ("openai",),
    **{name: ("vllm", "transformers", "openai")
       for name in ("temperature", "top_p", "max_tokens", "seed", "max_attempts")},
}


def _refuse_options_of_other_backends(ctx, backend):
    given = [name for name, backends in _BACKEND_OPTIONS.items()
             if backend not in backends
             and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        options = {p.name: p.opts[-1] for p in ctx.command.params}
        readers = sorted({b for name in given for b in _BACKEND_OPTIONS[name]})
        raise click.UsageError(
            f"{', '.join(options[name] for name in given)} "
            f"{'does' if len(given) == 1 else 'do'} not apply to the {backend} backend "
            f"(read by: {', '.join(readers)})."
            + (" Give --model for an LLM." if backend == "template" else "")
        )


@click.command("generate-captions",
               short_help="Write STAG captions for a training split as JSONL.")
@_DATASET
@_SPLIT_FILE
@click.option("--original-captions", type=click.Path(dir_okay=False),
              help="Original captions JSON (keys image_ids, captions); default: the "
                   "packaged LMPT captions of --dataset.")
@click.option("--no-original-captions", is_flag=True,
              help="Leave original captions out of the prompt.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Output JSONL; an existing file is resumed.")
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto",
              show_default=True,
              help="auto: vllm with --model, openai with --base-url, else template.")
@click.option("--model", help="Local model folder (vllm, transformers) or served "
                              "model name (openai).")
@click.option("--base-url", help="OpenAI-compatible API root, e.g. "
                                 "http://localhost:8000/v1 (openai backend).")
@click.option("--api-key", envvar="KDPVLPA_LLM_API_KEY",
              help="Bearer token for the openai backend, if the server wants one.")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=1,
              show_default=True, help="GPUs per model (vllm).")
@click.option("--engine-arg", "engine_args", multiple=True, metavar="KEY=VALUE",
              help="Extra vllm.LLM argument, VALUE read as JSON when it parses, "
                   "e.g. max_model_len=4096, enforce_eager=true. Repeatable.")
@click.option("--chat-template", type=click.Path(dir_okay=False, exists=True),
              help="Jinja chat template file for a model without one.")
@click.option("--dtype", default="auto", show_default=True,
              help="Model dtype (transformers backend): auto, or a torch dtype name "
                   "(float32, bfloat16, float16, ...).")
@click.option("--device", help="Device for the transformers backend (default: "
                               "cuda if available).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True,
              help="Base seed; each image and attempt derives its own.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="LLM attempts per image before the template caption is used.")
@click.option("--batch-size", type=click.IntRange(min=0), default=512, show_default=True,
              help="Images sent to the backend together (0: all pending at once). "
                   "Records are written after each batch, so a larger batch "
                   "schedules better and a smaller one loses less on a crash.")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=8,
              show_default=True, help="Prompts per generate() call (transformers).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight (openai).")
@click.option("--strict-validation", is_flag=True,
              help="Beyond METHOD.md's rules, also refuse an answer that mentions a "
                   "tail class without <tail> tags, or names a class the image "
                   "lacks even untagged.")
@click.option("--shard", "shard_spec", default=None, metavar="I/N",
              help="Handle shard I of N (0-based): every N-th image from the I-th.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first LIMIT images of the shard (for trials).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_captions_command(dataset, split_file, original_captions,
                              no_original_captions, out_path, backend, model,
                              base_url, api_key, tensor_parallel_size, engine_args,
                              chat_template, dtype, device, temperature, top_p,
                              max_tokens, seed, max_attempts, batch_size,
                              micro_batch_size, concurrency, strict_validation,
                              shard_spec, limit, quiet):
    """Write STAG captions (paper Fig. 3) for a training split as JSONL.

    Rerunning the same command resumes: finished images are skipped and a
    last line torn by a killed run is repaired.

    \b
    Examples:
      kdpvlpa generate-captions --dataset voc_lt --out captions.jsonl
      kdpvlpa generate-captions --dataset voc_lt --model models/gemma-2-9b-it \\
          --out captions.jsonl
      kdpvlpa generate-captions --dataset coco_lt --backend openai \\
          --base-url http://localhost:8000/v1 --out coco.jsonl --shard 0/2
    """
    if dataset is None and split_file is None:
        raise click.UsageError("Give --dataset or --split-file.")
    try:
        shard = Shard.parse(shard_spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard") from None
    engine_kwargs = _parse_engine_args(engine_args)
    if backend == "auto":
        backend = "openai" if base_url else ("vllm" if model else "template")
    if backend in ("vllm", "transformers") and not model:
        raise click.UsageError(f"--backend {backend} needs --model (a local model folder).")
    if backend == "openai" and not base_url:
        raise click.UsageError("--backend openai needs --base-url.")
    if backend == "template" and model:
        raise click.UsageError(
            "--backend template writes the deterministic template captions and "
            "uses no model; drop --model, or choose --backend vllm, transformers "
            "or openai."
        )
    _refuse_options_of_other_backends(click.get_current_context(), backend)

    split = _load_split_or_fail(dataset, split_file, original_captions, no_original_captions)
    sampling = SamplingSettings(temperature=temperature, top_p=top_p,
                                max_tokens=max_tokens, seed=seed)
    template_text = _read_chat_template(chat_template)
    options = {}
    if backend == "vllm":
        options = dict(model=model, tensor_parallel_size=tensor_parallel_size,
                       chat_template=template_text, engine_args=engine_kwargs)
    elif backend == "openai":
        options = dict(base_url=base_url, model=model, api_key=api_key,
                       concurrency=concurrency)
    elif backend == "transformers":
        options = dict(model=model, batch_size=micro_batch_size, device=device,
                       dtype=dtype, chat_template=template_text)

    total = len(shard.select(split.items))
    if limit is not None:
        total = min(total, limit)
    click.echo(
        f"{split.dataset}: {total} images (shard {shard}), {len(split.tail_classes)} "
        f"tail classes; backend {backend}" + (f", model {model}" if model else ""),
        err=True,
    )
    try:
        with _reported_as_click_errors(), Progress(total, "captions", stream=sys.stderr,
                                                   unit="images", hidden=quiet) as bar:

            def log(message):
                bar.break_line()
                click.echo(message, err=True)

            counts = generate_captions(
                split, lambda: make_backend(backend, sampling=sampling, **options),
                out_path, max_attempts=max_attempts, batch_size=batch_size,
                shard=shard, limit=limit, progress=bar.update, log=log,
                settings=run_settings(backend, model, sampling, strict_validation,
                                      template_text),
                strict_validation=strict_validation,
            )
    except KeyboardInterrupt:
        click.echo("Interrupted. Rerun the same command to resume: finished "
                   "images are kept.", err=True)
        sys.exit(130)
    click.echo(
        f"{out_path}: wrote {counts['written']} records (valid {counts['valid']}, "
        f"retried {counts['retried']}, fallback {counts['fallback']}); "
        f"{counts['skipped']} were already done."
    )


@click.group("captions")
def captions_group():
    """Inspect and combine caption files."""


@captions_group.command("stats")
@click.argument("file", type=click.Path(dir_okay=False))
@_DATASET
@_SPLIT_FILE
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats_command(file, dataset, split_file, as_json):
    """Counts, mean words and the Table 4 figure of a caption FILE.

    With --dataset or --split-file, also the images of the split that FILE
    lacks.
    """
    with _reported_as_click_errors():
        records, torn = read_records(file, allow_torn_tail=True)
    split = None
    if dataset or split_file:
        split = _load_split_or_fail(dataset, split_file, None, no_original=True)
    stats = caption_stats(records, split.class_names if split else ())
    ids = [r["image_id"] for r in records]
    stats["duplicate_images"] = len(ids) - len(set(ids))
    if torn:
        stats["torn_last_line_bytes"] = len(torn)
    if split is not None:
        have = set(ids)
        stats["missing_images"] = sum(1 for i in split.image_ids if i not in have)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo(format_stats(stats, file))
    if stats["duplicate_images"]:
        click.echo(f"  duplicate images  {stats['duplicate_images']}")
    if torn:
        click.echo(f"  torn last line    {len(torn)} bytes (rerun generation to repair)")
    if split is not None:
        click.echo(f"  missing images    {stats['missing_images']} of {len(split.items)}")


@captions_group.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@_DATASET
@_SPLIT_FILE
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def merge_command(shards, out_path, dataset, split_file, overwrite):
    """Join SHARDS into one file; every image of the split exactly once.

    The split is --dataset / --split-file, or the packaged dataset named in
    the records.
    """
    split = None
    if dataset or split_file:
        split = _load_split_or_fail(dataset, split_file, None, no_original=True)
    else:
        names = set()
        with _reported_as_click_errors():
            for path in shards:
                records, _ = read_records(path, allow_torn_tail=True)
                names |= {r.get("dataset") for r in records}
        if len(names) == 1 and next(iter(names)) in PACKAGED_DATASETS:
            split = _load_split_or_fail(next(iter(names)), None, None, no_original=True)
        else:
            raise click.UsageError(
                f"The shards name dataset(s) {sorted(map(str, names))}; give "
                "--dataset or --split-file so that completeness can be checked."
            )
    with _reported_as_click_errors():
        n = merge_shards(shards, out_path, split=split, overwrite=overwrite)
    click.echo(f"{out_path}: {n} records from {len(shards)} shard files, each image once.")


COMMANDS = [generate_captions_command, captions_group]
