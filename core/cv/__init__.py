"""Cross-validation wing: k-fold runs (a cv parent run, fold child runs, a refit) and the compare leaderboard.
Many runs of :mod:`trainforge.run` on the same folds; Imports run and the wings below it, never tuning."""
