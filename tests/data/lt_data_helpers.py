"""Helpers for the data tests: JPEGs and VOC XML in the real formats."""

import numpy as np
from PIL import Image

# The 80 COCO category ids (1..90 with gaps), as in instances_*2017.json.
COCO_CATEGORY_IDS = (
    list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45))
    + list(range(46, 66)) + [67, 70] + list(range(72, 83)) + list(range(84, 91))
)
VOC_TRAIN_IDS = 4
VOC_TEST_IDS = 4

def write_jpeg(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, quality=90)
    return path

def voc_xml(image_id, object_names, difficult=()):
    """A VOC annotation in the real format (person layout parts included)."""
    objects = []
    for n, name in enumerate(object_names):
        parts = ""
        if name == "person":
            # VOC2012 person layout: <part>s carry their own <name>.
            parts = (
                "<part><name>head</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
                "<xmax>9</xmax><ymax>9</ymax></bndbox></part>"
                "<part><name>hand</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                "<xmax>3</xmax><ymax>3</ymax></bndbox></part>"
            )
        objects.append(
            f"""
    <object>
        <name>{name}</name>
        <pose>Unspecified</pose>
        <truncated>0</truncated>
        <difficult>{1 if n in difficult else 0}</difficult>
        <bndbox><xmin>{1 + n}</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>{parts}
    </object>"""
        )
    return f"""<annotation>
    <folder>VOC</folder>
    <filename>{image_id}.jpg</filename>
    <source><database>The VOC Database</database></source>
    <size><width>40</width><height>30</height><depth>3</depth></size>
    <segmented>0</segmented>{''.join(objects)}
</annotation>
"""
