"""Search spaces: one declarative YAML file per optimizer, turned into Optuna and Ray Tune spaces.

from search_spaces import load_space
space = load_space("hvadam", overrides={"lr": {"low": 1e-4, "high": 1e-1}})
params = space.suggest(trial)                 # an optuna.Trial
kwargs = space.to_hyperparameters(params)     # optimizer keyword arguments
"""

from search_spaces.schema import ParamSpec, SpaceError
from search_spaces.space import SearchSpace, available_spaces, load_space

__all__ = ["ParamSpec", "SearchSpace", "SpaceError", "available_spaces", "load_space"]
