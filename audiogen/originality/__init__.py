"""Originality audit: is a generated track a copy of the training data?

- :mod:`audiogen.originality.tokens`: exact replication, a hashed n-gram index of the
  dataset's codec frames on disk and the longest shared run of frames;
- :mod:`audiogen.originality.near`: near replication that tokens miss, nearest-neighbour
  embedding similarity per window and a transposition-invariant chroma alignment;
- :mod:`audiogen.originality.audit`: both against one dataset, and the verdict;
- :mod:`audiogen.originality.report`: the HTML page with the matched excerpts.
"""
