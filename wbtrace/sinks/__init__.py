"""Sinks: where a committed step goes besides the local store (W&B, MLflow). See `base.TraceSink`."""
