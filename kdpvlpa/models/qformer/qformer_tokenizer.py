"""WordPiece tokenisation and packing for the Q-Former's text path.

The tokenizer is keras-hub's `BertTokenizer`: it runs without TensorFlow on
the torch backend (keras-hub's CLIP tokenizer does not), and the Q-Former's
text side is BERT, so no CLIP tokenizer is needed anywhere.
"""

import json
from pathlib import Path

import numpy as np


def _read_json(path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _tokenizer_json_vocabulary(folder):
    """The WordPiece vocabulary of `tokenizer.json`, as a list ordered by id."""
    model = _read_json(folder / "tokenizer.json").get("model") or {}
    if model.get("type") != "WordPiece":
        raise FileNotFoundError(
            f"No WordPiece vocabulary (vocab.txt, or a WordPiece tokenizer.json) in "
            f"{folder}; the Q-Former's tokenizer comes from the same folder as its "
            "weights. Save the BERT tokenizer there with its save_pretrained."
        )
    ids = model["vocab"]
    if sorted(ids.values()) != list(range(len(ids))):
        raise ValueError(
            f"The WordPiece vocabulary in {folder / 'tokenizer.json'} does not "
            "number its tokens 0 to N-1."
        )
    return sorted(ids, key=ids.get)


def load_bert_tokenizer(folder):
    """A keras-hub `BertTokenizer` from a Hugging Face BERT folder.

    The vocabulary is `vocab.txt`, or else the WordPiece vocabulary inside
    `tokenizer.json` (transformers 5's `save_pretrained` writes only that).
    The casing follows `tokenizer_config.json` as transformers' BERT
    tokenizer reads it: `do_lower_case` (default True) and `strip_accents`
    (default: as `do_lower_case`).
    """
    from kdpvlpa.backend import import_keras_hub

    BertTokenizer = import_keras_hub().models.BertTokenizer

    folder = Path(folder)
    vocab = folder / "vocab.txt"
    vocabulary = str(vocab) if vocab.is_file() else _tokenizer_json_vocabulary(folder)
    config = _read_json(folder / "tokenizer_config.json")
    lowercase = config.get("do_lower_case", True)
    strip_accents = config.get("strip_accents")
    # Hugging Face's BERT tokenizer strips accents whenever it lowercases,
    # unless told otherwise.
    if strip_accents is None:
        strip_accents = lowercase
    return BertTokenizer(
        vocabulary=vocabulary, lowercase=bool(lowercase), strip_accents=bool(strip_accents)
    )


def _as_text(text):
    # NumPy's str_ and bytes_ are subclasses of str and bytes.
    if isinstance(text, bytes):
        return bytes(text).decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(
            f"Texts must be strings. Received: {text!r} ({type(text).__name__})"
        )
    return str(text)


def pack_text(tokenizer, texts, sequence_length):
    """Tokenises `texts` into `[CLS] … [SEP]` rows padded to `sequence_length`.

    Returns:
        `(token_ids, padding_mask)`: int32 and bool arrays of shape
        `(len(texts), sequence_length)`; text that does not fit is truncated
        before `[SEP]`.
    """
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    texts = [_as_text(t) for t in texts]
    if sequence_length < 3:
        raise ValueError(
            f"`sequence_length` must be at least 3. Received: {sequence_length}"
        )
    token_ids = np.full((len(texts), sequence_length), tokenizer.pad_token_id, "int32")
    padding_mask = np.zeros((len(texts), sequence_length), bool)
    if not texts:
        return token_ids, padding_mask
    pieces = tokenizer(texts)
    for row, ids in enumerate(pieces):
        ids = [int(i) for i in np.asarray(ids).reshape(-1)][: sequence_length - 2]
        ids = [tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id]
        token_ids[row, : len(ids)] = ids
        padding_mask[row, : len(ids)] = True
    return token_ids, padding_mask
