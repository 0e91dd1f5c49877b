"""Registered method components: every module of this package is imported here, which registers its parts (a new
part is one new module)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
