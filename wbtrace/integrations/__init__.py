"""Integrations with RL trainers people already use: verl (`wbtrace.integrations.verl`) and TRL
(`wbtrace.integrations.trl`). Each module imports its trainer library lazily and raises
`MissingDependencyError` with the pip line (``pip install 'wbtrace[verl]'`` / ``'wbtrace[trl]'``)
when it is missing, so importing this package costs nothing.
"""
