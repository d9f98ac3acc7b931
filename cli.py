#!/usr/bin/env python3
"""`python cli.py ...` does what `pyvmm ...` does, also from a checkout that was never installed."""

import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    try:
        import pyvmm_bindings  # noqa: F401  (installed, or editable-installed)
    except ImportError:
        # The checkout's folders map onto import names (pyproject's package-dir); do the same mapping by hand.
        import importlib.util

        sys.path.insert(0, str(root))
        for name, folder in (("pyvmm_bindings", "bindings"), ("pyvmm_guests", "guest-kernels")):
            spec = importlib.util.spec_from_file_location(
                name, root / folder / "__init__.py", submodule_search_locations=[str(root / folder)]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    from pyvmm.cli import main

    main()
