"""Re-blend a delivered HEAL model at other base-weight shares, to see what ``base_weight_share="auto"`` chose among.

The blend is linear in the weights (:func:`heal_rag.models.blend_with_base_weights`), so the tuned model at share
``s`` is rebuilt exactly from the delivered one (share ``s*``) and the base: ``base + (1 - s) / (1 - s*) *
(delivered - base)``. Used by ``quality.py --blend-curve`` and ``documents.py --blend-curve``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def at_shares(model: Any, chosen_share: float, shares: Iterable[float], base_model: Any = None) -> Iterator[float]:
    """Set ``model``'s weights to each share in turn and yield it; the delivered weights are restored at the end.

    Args:
        model: The delivered HEAL ``SentenceTransformer`` (changed in place while iterating).
        chosen_share: The share it was delivered with (``heal_rag.json`` ``training.blend_selection.share``).
        shares: The shares to visit, each in ``[0, 1)``.
        base_model: The base model directory (``None``: the embedded all-MiniLM-L6-v2, which every benchmark tunes).
    """
    import torch

    from heal_rag.models import load_sentence_transformer

    base = load_sentence_transformer(base_model).state_dict()
    state = model.state_dict()
    delivered = {name: tensor.detach().clone() for name, tensor in state.items()}
    try:
        for share in shares:
            factor = (1.0 - float(share)) / (1.0 - float(chosen_share))
            with torch.no_grad():
                for name, tensor in state.items():
                    if tensor.is_floating_point():
                        tensor.copy_(base[name] + factor * (delivered[name] - base[name]))
            yield float(share)
    finally:
        with torch.no_grad():
            for name, tensor in state.items():
                tensor.copy_(delivered[name])
