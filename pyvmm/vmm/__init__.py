"""Running a VM: vCPU threads and their run loop, the lifecycle (start, pause, stop, reboot), the console."""
