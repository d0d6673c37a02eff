"""What a backend's sink and source share: its naming rules and its file formats (one module per backend).

`wbtrace.sinks` and `wbtrace.sources` both import from here and never from each other.
"""
