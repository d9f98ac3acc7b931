"""Per-VM idle (WFI/WFE on arm64, HLT/PAUSE/MWAIT on x86) policy: capabilities, policy model,
applying it to a VM, probing the host, and per-thread measurements.

`policy`, `apply`, `caps`, `host`, `measure` and `threads` talk to duck-typed VM objects (`vm.check_extension`,
`vm.enable_cap`, `vm.stats_fd`) and to /proc and /sys; `control` and `feature` tie them to a Vmm's lifecycle.
"""
