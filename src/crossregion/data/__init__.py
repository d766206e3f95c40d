"""Datasets and everything around them.

- ``labels``: label sets (on-disk ID -> train ID tables, class names, palettes).
- ``datasets``: loaders for the official layouts and ``build_dataset``.
- ``transforms``: paired transforms over sample dicts and the train/eval presets.
- ``sampler``: FADA's class-balanced source sampler.
- ``pseudo_labels``: the pseudo-label store (labels + entropy maps) and its writer.
- ``pseudo_labelled``: a target dataset with its stored pseudo labels and entropy.
- ``check``: ``crossregion data check`` and ``check_dataset``.

Import from the submodules; this package imports nothing, so ``crossregion data synth``
does not pay for the loaders.
"""
