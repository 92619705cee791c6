"""Tuning campaigns: workloads, campaign specs, the Optuna and Ray runners, the results database and the command line."""
