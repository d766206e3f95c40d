"""``crossregion pipeline --config PRESET --output DIR [key=value ...]``: the paper's Fig. 2 in one command.

Stages, each in its own folder of ``DIR``::

    00_source                 source-only training (stage 0)
    00_oracle                 source_only on labelled target train (optional; a reference only)
    01_cda_<m>                CDA method <m> from the source model (stage 1), one per CDA method
    01_bn_target_<m>          no training: the CDA model with BatchNorm statistics re-estimated on target train
    02_pseudo_<m>             pseudo-label store of the CDA model on target train (stage 2)
    03_cra_<m>                CRA from the CDA model and its store (stage 3)
    03_<baseline>_<m>         Table-3 baselines (pseudo_label_only, entropy_min) on the same store (optional)
    03_<...>_select           with select: <criterion>, the checkpoint of CRA / a baseline that the criterion picks
    04_pseudo_cra_<m>         pseudo labels of the CRA model (optional, for self-distillation)
    05_self_distill_<m>       self-distillation on them (optional, stage 4)

Every stage writes ``stage.json`` with a hash of its resolved config and of the stages it reads,
the files it wrote (relative to ``DIR``) with their SHA-256 (and, for the report, its wall time
and the machine and versions it ran with). A stage whose ``stage.json`` is complete with the same
hash, and whose files are there and unchanged, is skipped; otherwise its folder is moved to
``<stage>.previous1`` (``.previous2``, ...: every generation is kept) and the stage reruns, and,
through the chained hashes, everything after it. So a moved or copied ``DIR`` reads only its own
files. An interrupted training stage resumes from its ``last.pth``; an interrupted store resumes
per image. One pipeline at a time writes ``DIR`` (a lock; a second one is refused).

The pipeline config (``configs/pipelines/*.yaml``) names a training preset and overrides per
stage. Overrides may use the placeholders ``$source_checkpoint``, ``$cda_checkpoint``,
``$pseudo_labels`` (the store the stage trains on) and ``$cra_checkpoint``, so the wiring
between stages is visible in the preset (``$$`` is a literal dollar). Target-train ground truth is
read only by the report (trusted-pixel precision, error shares), never by a training stage.
"""
