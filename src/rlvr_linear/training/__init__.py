"""Training: the RL trainer that saves checkpoint trajectories, the supervised one, and the callbacks that act on a
live trainer.

One concept per module:

* :mod:`.grpo`: ``TrainConfig`` and GRPO (and DAPO, Dr. GRPO, GSPO, BNPO) training with TRL that saves a trajectory
  and resumes after a kill (``rlvr-linear train``);
* :mod:`.sft`: supervised trajectories with token-level random-sign noise (the mechanism experiment);
* :mod:`.regrounding`: ``ReGroundingCallback``, the in-process jump ``W <- W_a + alpha (W - W_a)`` every M steps;
* :mod:`.reground_driver`: the same loop around any trainer's command line (``rlvr-linear reground``);
* :mod:`.monitor`: ``LinearityMonitor``, drift-to-noise, R² against the null, error ratio and h* in the logs;
* :mod:`.distributed`: unwrapping models, this rank's parameter shards, a DDP agreement check (used by both
  callbacks, so that neither imports the other);
* :mod:`.sketch_callback`: the trajectory sketch written while training (``train --sketch``);
* :mod:`.optimizers` and :mod:`.resume`: the optimizer choice, and a run's ``resume/`` folder;
* :mod:`.grpo_step`: a bare PyTorch GRPO step, its model FLOPs and the machine's matmul throughput (the yardstick of
  ``bench/train_step.py``).

Importing this package loads nothing (the modules load torch and transformers); import them by name.

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``, ``models``, ``linearity``,
``extrapolation``, ``advisor``.
"""
