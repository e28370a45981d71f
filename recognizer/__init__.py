"""recognizer: a large-vocabulary visual item recognizer.

Data flows one way, one subpackage per stage: ``data`` (manifests, images) -> ``models``
(embeddings) -> ``gallery`` (enrolled vectors, search) -> ``matching`` (decided matches, the
camera) -> ``evaluation`` (metrics, reports); ``train`` fine-tunes models and ``deploy``
exports them. Top level: ``session`` (which embedder a gallery accepts), ``enroll``,
``cli`` (flags shared by the tools), ``fileio`` (atomic writes), ``demo``.
"""
