"""Blind listening tests: stimulus preparation, the web app, its database and the statistics.

``experiment`` (YAML config, stimulus prep, per-participant plans), ``db`` (SQLite),
``server`` (FastAPI app), ``stats`` (pure statistics), ``report`` (analysis + HTML),
``loadtest`` (simulated participants over HTTP). See docs/listening.md.
"""
