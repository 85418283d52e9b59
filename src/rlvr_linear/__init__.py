"""rlvr-linear: measure, forecast and exploit the linear dynamics of RLVR training.

The package stands in floors, bottom first. A module imports from its own package and from packages on lower floors,
never from another package on its floor or above (``tests/test_architecture.py`` checks it, imports inside functions
included). This module holds only ``__version__`` and imports nothing, so any module may import it.

    errors                              ``RlvrLinearError``: the failures a command reports in one line
    runtime                             torch's thread policy, process groups that end with us, TRL on CPU
    io                                  files: atomic outputs, checkpoints, the Hub, verl shards, loading models
    evaluation, reporting               tasks and their evaluation; figures and the study's report
    models, linearity, extrapolation    base and test models; trajectory linearity; weight and logit extrapolation
    advisor                             how far a jump is safe (backtests); training's monitor calls it live
    training                            GRPO and SFT runs that save trajectories, their callbacks, re-grounding
    study                               the paper's findings in miniature, the README's tables, advisor experiments
    regime                              the regime map over learning rate x responses per step
    cli                                 the ``rlvr-linear`` command
    __main__                            ``python -m rlvr_linear``

Each package's docstring says what it owns and names the packages it may import.
"""

__version__ = "0.1.0"
