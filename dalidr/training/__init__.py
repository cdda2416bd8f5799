"""Serve, learn, evaluate: the loaders users put into their training loops, the losses,
`dalidr train`, `dalidr eval`, and the CPU thread plan they share.

- `loader` (`ReinforcedLoader`) and `plain_loader` (`PlainLoader`) over `dali_loader`'s
  common machinery, configured by `loader_config` (`LoaderConfig`).
- `losses`: the KL loss against stored top-k targets (paper Sec. 2.1).
- `train`, `evaluate`: the commands; `cpu_threads`: how a 2-core or 96-core host splits.
"""
