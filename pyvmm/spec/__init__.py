"""What a VM is: `VmSpec` (plain dataclasses, validated once) and the functions that build one from option values.

`core` holds the spec itself and the core checks; `options` turns `pyvmm run` option values (strings from the CLI or
Python values from `pyvmm.testing.Machine`) into validated parts. Both are light: `pyvmm run` imports them at start-up.
"""

from pyvmm.spec.core import ConsoleSpec, IdleSpec, TestingSpec, VmSpec, parse_size

__all__ = ["ConsoleSpec", "IdleSpec", "TestingSpec", "VmSpec", "parse_size"]
