"""s5vh: self-supervised video hashing (S5VH) and near-duplicate / semantic video retrieval."""

__version__ = "0.1.0"
