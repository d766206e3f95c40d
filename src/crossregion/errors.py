"""The project's own error base, for the failures that are neither bad values nor files.

Bad input raises ``ValueError``/``KeyError`` (config, dataset, checkpoint contents) or ``OSError``
(files); a run that goes wrong for a reason the user can act on raises a ``CrossregionError``
(a loss turned NaN, an optional dependency missing). The command line reports these in one
line; any other exception (a bug, a torch failure) keeps its traceback.
"""


class CrossregionError(Exception):
    """A failure the user can act on; its message says how."""
