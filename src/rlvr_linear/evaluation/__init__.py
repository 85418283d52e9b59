"""Tasks and their evaluation: the verifiable tasks (:mod:`.tasks`: prompts, answer extraction, verifiers, the
``get_task`` registry, disjoint splits) and the evaluation of models on them (:mod:`.evaluation`: generation,
greedy accuracy, avg@k, pass@k, paired bootstrap CIs; a path is loaded with :func:`rlvr_linear.io.loading.load_model`).

Importing this package loads nothing; import the modules by name (``evaluation`` loads torch and scipy).

May import: ``errors``, ``runtime``, ``io``.
"""
