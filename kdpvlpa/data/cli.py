"""`kdpvlpa data ...`: dataset commands (registered by `kdpvlpa/cli.py`)."""

from pathlib import Path

import click

from kdpvlpa.data.check import DISPLAY_NAMES, HOW_TO_GET, scan_dataset
from kdpvlpa.data.coco import load_coco_captions
from kdpvlpa.data.images import corrupt_images_message, missing_images_message
from kdpvlpa.data.splits import load_split


@click.group("data")
def data():
    """Dataset tools."""


@data.command("check")
@click.option(
    "--dataset",
    type=click.Choice(sorted(HOW_TO_GET)),
    required=True,
    help="Which dataset to check.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The dataset root (VOC: holds VOCdevkit/; COCO: holds train2017/, "
    "val2017/, annotations/).",
)
@click.option(
    "--verify-images",
    is_flag=True,
    help="Also decode every image to find corrupt files (slower).",
)
def check(dataset, data_dir, verify_images):
    """Count present / missing / corrupt images of each split.

    Exits non-zero, with one message saying what is missing and where to
    get it, unless every image is there.
    """
    display = DISPLAY_NAMES[dataset]
    root = data_dir.expanduser().resolve()
    try:
        scans = scan_dataset(dataset, root, verify_images=verify_images,
                             progress=True if verify_images else False)
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{display} in {root}")
    problems = []
    for split, scan in scans.items():
        corrupt = f"{len(scan.corrupt)} corrupt" if scan.verified else "not verified"
        click.echo(
            f"  {split:5s}: {scan.total} images: {scan.present} present, "
            f"{len(scan.missing)} missing, {corrupt}"
        )
        name = f"{display} {split}"
        if scan.missing:
            problems.append(
                missing_images_message(scan.missing, scan.total, name, "")
            )
        if scan.corrupt:
            problems.append(corrupt_images_message(scan.corrupt, scan.total, name))
    if dataset == "coco_lt":
        captions = root / "annotations" / "captions_train2017.json"
        state = "not found (the packaged LMPT captions will be used)"
        if captions.is_file():
            try:
                load_coco_captions(captions, load_split("coco_lt", "train")["image_ids"])
                state = "found, a caption for every training image"
            except (OSError, ValueError) as error:  # CaptionsMissingError included
                state = "found but unusable"
                problems.append(str(error))
        click.echo(f"  captions: annotations/captions_train2017.json {state}")
    if problems:
        if not root.is_dir():
            problems.append(f"The folder {root} does not exist.")
        if any(scan.missing for scan in scans.values()):
            problems.append(HOW_TO_GET[dataset])
        raise click.ClickException(" ".join(p.strip() for p in problems))
    click.echo("All images present." + (" All readable." if verify_images else ""))
