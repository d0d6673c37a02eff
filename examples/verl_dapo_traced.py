"""Example: trace a verl DAPO/PPO run with wbtrace. Needs verl's usual GPU setup (Ray, vLLM/SGLang).

It is verl's own entry point with one added line. verl's `main_ppo.py` builds the trainer inside a Ray
`TaskRunner.run`; copy that module (or the DAPO recipe's `main_dapo.py`) and add, between the trainer's
construction and `trainer.fit()`:

    from wbtrace.integrations.verl import attach
    attach(trainer, output_dir=config.trainer.default_local_dir + "/wbtrace")   # + sinks=[...] for W&B/MLflow

The trainer lives in Ray's TaskRunner process, so patching classes from the driver does not reach it:
the line must go into the code that builds the trainer. `fit_with_trace` below is that line as a function.
"""

from wbtrace.integrations.verl import attach


def fit_with_trace(trainer, output_dir: str, sinks=()):
    """`trainer` is a verl RayPPOTrainer or recipe RayDAPOTrainer after `init_workers()`."""
    tracer = attach(trainer, output_dir=output_dir, sinks=sinks)
    trainer.fit()  # the writer is closed when fit returns or raises
    return tracer.writer.report
