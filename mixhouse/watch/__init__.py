"""One scanning engine for every watcher of a chain (issue 8 part 1): see :mod:`mixhouse.watch.engine`.

A shared layer: it imports ``chains/``, ``db/``, config and audit, never a feature.
"""
