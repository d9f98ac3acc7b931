"""The x86_64 machine: a PC-like board with in-kernel PIC/IOAPIC/PIT, COM1, and flat real-mode payloads."""
