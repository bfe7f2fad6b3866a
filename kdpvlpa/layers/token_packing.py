import keras
from keras import ops


class TokenPacking:
    """Packs the real tokens of a padded batch into one `(N, ...)` matrix.

    Everything in a BERT layer except the attention itself works token by
    token, so the text path runs its projections, feed-forwards and
    LayerNorms on the `N` real tokens only, and pads to `(B, L, ...)` just
    around the attention (as padding-free BERT implementations do). With
    captions of mixed lengths this skips a third or more of the text path's
    work; outputs at real tokens are unchanged.

    When padding, a padded position receives a copy of a real token of the
    batch. The attention mask hides it as a key, and its own output is dropped
    by `pack`, so it changes no value and no gradient.

    Build it with `TokenPacking.from_mask`, which returns None when nothing
    would be saved (no mask, no padding, or no real token at all) and for
    symbolic inputs. Building one reads the mask (a device synchronisation on
    GPU), so it suits eager execution, which is how kdpvlpa trains.

    Args:
        padding_mask: `(B, L)` boolean tensor, `True` at real tokens.
    """

    def __init__(self, padding_mask):
        mask = ops.reshape(ops.cast(padding_mask, "bool"), (-1,))
        self.batch_size, self.length = ops.shape(padding_mask)
        # Row of every real token in the flattened (B*L) batch.
        self.token_rows = ops.nonzero(mask)[0]
        self.num_tokens = int(ops.shape(self.token_rows)[0])
        # For every position of the padded batch, a row of the packed matrix:
        # its own for real tokens, the previous real token's for padding.
        rank = ops.cumsum(ops.cast(mask, "int32")) - 1
        self.padded_rows = ops.maximum(rank, 0)
        # Same, with padding pointing past the end (at an appended zero row).
        self.output_rows = ops.where(mask, rank, self.num_tokens)

    @classmethod
    def from_mask(cls, padding_mask):
        if padding_mask is None or isinstance(padding_mask, keras.KerasTensor):
            return None
        padding_mask = ops.convert_to_tensor(padding_mask)
        if str(padding_mask.device) == "meta":
            return None
        # Nothing to skip, or nothing to keep (one read of the mask).
        count = int(ops.sum(ops.cast(padding_mask, "int32")))
        if count == 0 or count == int(ops.size(padding_mask)):
            return None
        return cls(padding_mask)

    def pack(self, x):
        """`(B, L, ...)` → `(N, ...)`: the real tokens only."""
        flat = ops.reshape(x, (self.batch_size * self.length,) + tuple(ops.shape(x)[2:]))
        return ops.take(flat, self.token_rows, axis=0)

    def pad(self, x):
        """`(N, ...)` → `(B, L, ...)`, padded positions holding copies."""
        x = ops.take(x, self.padded_rows, axis=0)
        return ops.reshape(x, (self.batch_size, self.length) + tuple(ops.shape(x)[1:]))

    def unpack(self, x):
        """`(N, ...)` → `(B, L, ...)` with zeros at padded positions."""
        zero = ops.zeros((1,) + tuple(ops.shape(x)[1:]), dtype=x.dtype)
        x = ops.take(ops.concatenate([x, zero], axis=0), self.output_rows, axis=0)
        return ops.reshape(x, (self.batch_size, self.length) + tuple(ops.shape(x)[1:]))
