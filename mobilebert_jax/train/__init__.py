"""The training library every trainer shares.

State (`train_state`), the step contract (`steps`), optimizers and schedules (`optim`,
`schedules`, `grad_accum`), sharding (`sharding`), checkpoints (`checkpointing`), multi-host
input (`distributed`), summaries (`summaries`), evaluation (`evaluation`), losses (`losses`),
where a run's first weights come from (`initialization`), the start-up every trainer shares
(`setup`), the loop body (`loop`), analytic FLOPs and device peaks (`flops`), preemption
(`preemption`), checkpoint fingerprints (`fingerprints`), and distillation's pieces
(`progressive`, `transfer_losses`).
"""
