"""pyvmm: a userspace virtual machine monitor for Linux KVM, in Python.

Imports are kept lazy on purpose: `pyvmm run` pays for every module it loads before the guest prints.
"""

__version__ = "0.1.0"
