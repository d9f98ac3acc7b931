"""virtio 1.x devices on the virtio-mmio (version 2) transport.

Modules: `constants` (spec numbers), `config` (device options, light: imported by pyvmm.config), `virtqueue` (split
rings over GuestMemory), `transport` (the MMIO register file), `worker` (one event loop thread per device: ioeventfd
notifications in, irqfd interrupts out), `blk`, `rng`, `console`, `net`, and `setup` (the machine step that builds
the configured devices). Keep this file free of imports: `pyvmm run` imports the config module at startup.
"""
