"""The training library every trainer shares.

State (`train_state`), the step contract (`steps`), optimizers and schedules (`optim`,
`schedules`, `grad_accum`), sharding (`sharding`), checkpoints (`checkpointing`), multi-host
input (`distributed`), summaries (`summaries`), evaluation (`evaluation`), losses (`losses`),
where a run's first weights come from (`initialization`) and the loop body (`loop`).
"""
