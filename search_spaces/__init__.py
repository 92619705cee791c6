"""Search spaces: one declarative YAML file per optimizer, turned into Optuna and Ray Tune spaces."""
