"""The search stage: scorers (one file per method in ``methods/``) and their Optuna studies."""
