"""The `kdpvlpa` command line: a thin click group over the library."""

import click

from kdpvlpa import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdpvlpa")
def main():
    """DP-VLPA long-tailed multi-label recognition (Keras 3, PyTorch backend)."""


def _register_llm_gen_commands():
    # llm_gen never imports vllm or keras at import time, so this stays cheap.
    from llm_gen import cli as llm_cli

    for command in llm_cli.COMMANDS:
        main.add_command(command)


_register_llm_gen_commands()


if __name__ == "__main__":
    main()
