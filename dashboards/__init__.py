"""Dashboards and reports: optuna-dashboard on a campaign storage, static HTML/PNG reports, exports."""
