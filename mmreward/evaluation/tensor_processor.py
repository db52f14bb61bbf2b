"""A processor wrapper whose `return_tensors="pt"` batches skip transformers' per-sequence Python work.

For a batch, a Hugging Face multimodal processor builds `mm_token_type_ids` with NumPy one
sequence at a time and, before turning token lists into tensors, flattens every list in Python
to check that it is not empty. Both scale with the number of tokens (together about a fifth of
the processor's time on a batch of 64 short image sequences). `TensorProcessor` asks the
processor for plain lists, converts them with one `torch.tensor` call each and derives the token
types from the ids on the whole tensor: the same keys, values and dtypes as the wrapped processor
returns (tested). Integer lists go through NumPy, about six times faster than `torch.tensor` on
nested Python lists. Everything else (chat templates, the tokenizer, image and video processors)
is the wrapped processor's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["TensorProcessor"]


class TensorProcessor:
    """Wraps `processor`; calls with `return_tensors="pt"` take the faster path described above."""

    def __init__(self, processor: Any):
        self.processor = processor
        # Token type per modality, as the processor's create_mm_token_type_ids assigns them.
        self._type_ids = {
            value: [i for i in getattr(processor, f"{name}_token_ids", []) if i is not None]
            for value, name in ((1, "image"), (2, "video"), (3, "audio"))
        }
        # Only add the key where the wrapped processor returns it by default.
        self._returns_types = "mm_token_type_ids" in processor(text=["x"], return_tensors="pt")

    def __getattr__(self, name: str) -> Any:
        if name == "processor":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.processor, name)

    def __call__(self, *args: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
        if return_tensors != "pt" or "return_mm_token_type_ids" in kwargs:
            return self.processor(*args, return_tensors=return_tensors, **kwargs)
        from transformers import BatchFeature

        out = self.processor(*args, return_tensors=None, return_mm_token_type_ids=False, **kwargs)
        data = {key: _as_tensor(value) for key, value in out.items()}
        if self._returns_types:
            ids = data["input_ids"]
            types = torch.zeros_like(ids)
            for value, token_ids in self._type_ids.items():
                if token_ids:
                    types[torch.isin(ids, torch.tensor(token_ids, dtype=ids.dtype))] = value
            data["mm_token_type_ids"] = types
        return BatchFeature(data)


def _as_tensor(value: Any) -> torch.Tensor:
    """`torch.tensor(value)`'s result; integer and boolean lists are converted through NumPy."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        return torch.from_numpy(array.astype(np.int64, copy=False))
    if array.dtype.kind == "b":
        return torch.from_numpy(array)
    return torch.tensor(value)  # floats and anything else: torch's own dtype rules
