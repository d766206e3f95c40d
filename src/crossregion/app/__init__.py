"""The application layer: the commands, wired from the library below.

Importing it fills the registries the config loader reads (dataset, backbone and method names),
so every command can load any preset.
"""

import crossregion.data.datasets  # noqa: F401  (registers the datasets)
import crossregion.methods  # noqa: F401  (registers the methods)
import crossregion.models  # noqa: F401  (registers the backbones)
