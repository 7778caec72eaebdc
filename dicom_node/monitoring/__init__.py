"""Post-market monitoring of the models in use: the record of every inference (records.py),
drift against a reference window (drift.py), plots for the dashboard (plots.py)."""
