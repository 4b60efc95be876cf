"""`tetriszmq sweep`: hyper-parameter sweeps on Optuna, each trial a real training run.

Optuna owns the study: the sampler (TPE), the pruner, the trial numbers and the storage. This
package adds what is ours: the space file (`space`), a trial as a `tetriszmq train` process
watched through its stream (`trial`), and the storage choice and the report (`study`).

``--trials N`` is the study's size, not this process's: a sweep stops asking for trials once the
study holds N that are complete, pruned or running, so several sweeps (machines) on one storage
share the N, and a restarted sweep runs only what is missing. Sweeps that ask at the same moment
can overshoot by a few trials; Optuna numbers every trial once, whoever asks.
"""

from tetriszmq.sweep.space import Space, SpaceError
from tetriszmq.sweep.study import StorageError, report, sweep

__all__ = ["Space", "SpaceError", "StorageError", "report", "sweep"]
