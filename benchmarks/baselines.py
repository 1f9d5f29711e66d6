"""The stock fine-tunes HEAL is measured against, shared by ``quality.py`` and ``documents.py``.

- :func:`train_mnrl`: sentence-transformers' MultipleNegativesRankingLoss on (query, document) pairs with the
  no-duplicates batch sampler, what sentence-transformers users do today.
- :func:`train_llamaindex_finetune`: LlamaIndex's ``SentenceTransformersFinetuneEngine`` (``llama-index-finetuning``)
  on the same pairs, what LlamaIndex users do today. Install it with
  ``pip install llama-index-finetuning "mistralai<2"`` (its package ``__init__`` imports ``mistralai.Mistral``, which
  mistralai 2 and later no longer have).

Both start from the embedded all-MiniLM-L6-v2 and train ``steps`` optimiser steps of ``batch_size`` pairs at
``max_seq_length`` tokens, so every trained method of a benchmark sees the same number of pairs.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _check_pairs(queries: Sequence[str], documents: Sequence[str]) -> None:
    if len(queries) != len(documents) or not queries:
        raise ValueError(f"Need one query per document and at least one pair; got {len(queries)}, {len(documents)}.")


def train_mnrl(
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    max_seq_length: int,
    seed: int,
    output_dir: Path,
) -> Any:
    """MNRL on (query, document) pairs, batches without duplicates; returns the trained ``SentenceTransformer``."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    _check_pairs(queries, documents)
    model = load_sentence_transformer(None)
    set_max_seq_length(model, max_seq_length)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_ratio,
        seed=seed,
        data_seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        logging_steps=max(1, steps // 10),
    )
    dataset = Dataset.from_dict({"query": list(queries), "document": list(documents)})
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model)
    ).train()
    return model


def train_llamaindex_finetune(
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    max_seq_length: int,
    seed: int,
    output_dir: Path,
) -> Any:
    """LlamaIndex's ``SentenceTransformersFinetuneEngine`` with its defaults, at the benchmark's step budget.

    The engine's own settings stay as they are (MultipleNegativesRankingLoss, ``SentenceTransformer.fit``'s learning
    rate 2e-5, warm-up over 10 % of the steps, batches that may repeat a document); only its batch size (default 10)
    and length (default 2 epochs) are set so that it takes ``steps`` steps of ``batch_size`` pairs, like every other
    trained method: the pairs are cycled to ``steps * batch_size`` rows, shuffled with ``seed`` (``fit`` itself always
    shuffles with seed 42), and trained for one epoch. It evaluates nothing
    during training (``evaluation_steps=0``): with no validation set, the engine's default of 50 makes
    sentence-transformers 6's ``fit`` raise before training.

    Returns:
        The trained ``SentenceTransformer`` (also saved by the engine under ``output_dir``).

    Raises:
        SystemExit: When ``llama-index-finetuning`` is not installed (the message gives the install command).
    """
    try:
        from llama_index.finetuning import SentenceTransformersFinetuneEngine
        from llama_index.finetuning.embeddings.common import EmbeddingQAFinetuneDataset
    except ImportError as error:
        raise SystemExit(
            f"The llamaindex baseline needs llama-index-finetuning ({error}): "
            'pip install llama-index-finetuning "mistralai<2"'
        ) from error

    from heal_rag.models import default_model_path

    _check_pairs(queries, documents)
    rows = list(itertools.islice(itertools.cycle(range(len(queries))), steps * batch_size))
    random.Random(seed).shuffle(rows)
    dataset = EmbeddingQAFinetuneDataset(
        queries={f"q{n}": queries[i] for n, i in enumerate(rows)},
        corpus={f"d{i}": documents[i] for i in set(rows)},
        relevant_docs={f"q{n}": [f"d{i}"] for n, i in enumerate(rows)},
    )
    engine = SentenceTransformersFinetuneEngine(
        dataset,
        model_id=str(default_model_path()),
        model_output_path=str(output_dir),
        batch_size=batch_size,
        epochs=1,
        show_progress_bar=False,
        evaluation_steps=0,  # no validation set: the default 50 makes sentence-transformers 6's fit() refuse to start
    )
    engine.model.max_seq_length = max_seq_length
    engine.finetune()
    return engine.model
