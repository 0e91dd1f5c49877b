"""Methods: registered components composed by name (`sdclr+gh`), see `registry.py` and `method.py`."""
