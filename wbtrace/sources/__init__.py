"""Sources: where `wbtrace pull` brings steps from (W&B API, W&B offline run dir, MLflow)."""
