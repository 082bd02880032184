"""Tools that work on runs: `sweep` (grids in W&B's format), `report` (the paper's tables and verdict),
`plan` (what a cluster would take), `export` (a run's weights for timm), `figures` (every plot) and `cli`
(the `largebatch` command)."""
