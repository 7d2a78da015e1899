"""segexp's Optuna sweeper as a Hydra plugin (:mod:`hydra_plugins.segexp_optuna.sweeper`).

Hydra finds sweepers only in the ``hydra_plugins`` namespace package (``hydra.sweeper._target_`` must name a class
there); the search itself is :mod:`segexp.launch.optuna_search`.
"""
