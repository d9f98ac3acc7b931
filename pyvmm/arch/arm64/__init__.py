"""The arm64 machine: QEMU-virt-like map, in-kernel vGIC and timer, PSCI, 16550 UART, device tree, Linux Image boot."""
