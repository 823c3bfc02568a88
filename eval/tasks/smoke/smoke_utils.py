"""Deterministic subsets for the revision_smoke tasks: evenly spaced documents, no randomness."""

SMOKE_DOCS = 24  # revision_plugin.compare.suite.SMOKE_DOCS


def _spaced(n_total, n):
    if n_total <= n:
        return list(range(n_total))
    return [round(i * (n_total - 1) / (n - 1)) for i in range(n)]


def smoke_docs(dataset):
    """SMOKE_DOCS evenly spaced documents (first and last included)."""
    return dataset.select(_spaced(len(dataset), SMOKE_DOCS))


def smoke_docs_mme(dataset):
    """MME asks every image twice and its aggregation needs both questions: keep whole pairs."""
    ids = dataset["question_id"]
    order = list(dict.fromkeys(ids))
    keep = {order[i] for i in _spaced(len(order), SMOKE_DOCS // 2)}
    return dataset.select([i for i, q in enumerate(ids) if q in keep])
