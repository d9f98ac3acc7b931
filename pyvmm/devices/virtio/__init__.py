"""virtio 1.x devices on the virtio-mmio (version 2) transport.

Modules: `constants` (spec numbers), `config` (device options, light: imported by pyvmm.config), `virtqueue` (split
rings over GuestMemory), `device` (the device contract: `VirtioDevice.activate(memory, interrupt, queues)`),
`transport` (the MMIO register file, which fulfils that contract), `worker` (one event loop thread per device:
ioeventfd notifications in, irqfd interrupts out), `interrupt` (irqfd or KVM_IRQ_LINE), the devices `blk`, `rng`,
`console`, `net` (over `tap`) and `vsock` (over `vhost`), and `catalog` (which class serves each device
option; pyvmm.devices.manager places and wires them). Keep this file free of imports: `pyvmm run` imports the config
module at startup.
"""
