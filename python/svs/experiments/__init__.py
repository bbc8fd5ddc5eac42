"""The research harness around SVS, on data that needs no download: a teacher DDPM on
scikit-learn's digits (:mod:`.data`), structured pruning (:mod:`.pruning`), fine-tuning and
sampling (:mod:`.pipelines`), sample scores (:mod:`.metrics`) and their ``svs`` subcommands
(:mod:`.cli`). Needs the ``experiments`` extra (diffusers, torch-pruning, scikit-learn,
matplotlib); the core ``svs`` package does not import it.
"""
