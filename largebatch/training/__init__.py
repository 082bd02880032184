"""Training: everything a run needs, from its options to its checkpoints.

The paper's rules: `config` (one dataclass of options), `schedule` (the rate at a step), `optim`
(weight-decay groups, the eq. 10 SGD), `batchnorm` (ghost BN over n), `sharding` (which examples each
device sees), `augment`, `noise` (the gradient noise scale). What is trained on: `data`, `models`,
`recipes` (name -> data set and defaults). The run itself: `launch` (Accelerator, process group,
W&B), `rundir` (the run folder and its lock), `preempt` (stopping cleanly on signals), `engine` (the
loop), `step` (one optimizer step), `evaluate`, `checkpoint`, `metrics`.
"""
