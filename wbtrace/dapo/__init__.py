"""The DAPO trainer on Ray that traces every rollout token (see `trainer.py` for the loop and commands)."""
