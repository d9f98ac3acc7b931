"""Emulated devices and the buses they sit on (MMIO for both architectures, port I/O on x86_64)."""
