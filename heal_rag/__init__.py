"""heal_rag: hierarchy-aware retrieval for RAG with the HEAL loss.

Light objects (label paths, queries, corpus I/O) import eagerly; everything that needs torch or
sentence-transformers is imported on first use, so ``import heal_rag`` and the CLI start fast.

Example:
    ```python
    from heal_rag import fine_tune, read_corpus

    corpus = read_corpus("corpus.jsonl")    # {"id", "text", "labels": ["A", "B"], "title"?} per line
    result = fine_tune(corpus.texts, corpus.labels, titles=corpus.titles, output_dir="models/heal", max_steps=60)
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heal_rag._version import __version__
from heal_rag._warning import HEALWarning
from heal_rag.data import Corpus, CorpusFormatError, hashed_split, read_corpus, read_queries
from heal_rag.labels import LabelPathError, LabelPaths
from heal_rag.queries import KeySentenceQueryGenerator, Query, QueryGenerator

if TYPE_CHECKING:
    from heal_rag.losses import HEALLoss, level_weight_schedule
    from heal_rag.sampler import HierarchicalBatchSampler
    from heal_rag.training import FineTuneResult, HEALTrainingConfig, fine_tune

_LAZY = {
    "HEALLoss": "heal_rag.losses",
    "level_weight_schedule": "heal_rag.losses",
    "HierarchicalBatchSampler": "heal_rag.sampler",
    "fine_tune": "heal_rag.training",
    "FineTuneResult": "heal_rag.training",
    "HEALTrainingConfig": "heal_rag.training",
}

__all__ = [
    "Corpus",
    "CorpusFormatError",
    "FineTuneResult",
    "HEALLoss",
    "HEALTrainingConfig",
    "HEALWarning",
    "HierarchicalBatchSampler",
    "KeySentenceQueryGenerator",
    "LabelPathError",
    "LabelPaths",
    "Query",
    "QueryGenerator",
    "__version__",
    "fine_tune",
    "hashed_split",
    "level_weight_schedule",
    "read_corpus",
    "read_queries",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'heal_rag' has no attribute {name!r}")
