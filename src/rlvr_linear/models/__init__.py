"""The models the runs start from: the tiny base models (:mod:`.base_model`: recipe, SFT warm-up, the copies shipped
in the package data ``rlvr_linear/assets`` and their digests, the SmolLM2-135M preset) and the pico models and
synthetic trajectories of the tests and benchmarks (:mod:`.testing`).

Loading any checkpoint is :func:`rlvr_linear.io.loading.load_model`, and the character tokenizer
:mod:`rlvr_linear.io.tokenizer`: both sit below evaluation, which building a base model needs.

Importing this package loads nothing; import the modules by name (both load torch).

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``.
"""
