"""Hierarchy discovery: HNMFk (hierarchical NMF with automatic choice of k) on TF-IDF."""

from __future__ import annotations

from heal_rag.hierarchy.hnmfk import HierarchyNode, HNMFk, project
from heal_rag.hierarchy.nmfk import KScore, KSelection, select_k

__all__ = ["HNMFk", "HierarchyNode", "KScore", "KSelection", "project", "select_k"]
