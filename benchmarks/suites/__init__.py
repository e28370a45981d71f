"""One module per benchmark suite; each has a ``run(...)`` function returning a JSON-able dict and a
``QUICK`` dict of small sizes (see ``benchmarks.run``)."""
