"""Data: manifests, importers, the synthetic corpus, batching and datasets."""
