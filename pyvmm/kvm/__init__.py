"""The KVM objects: the system (/dev/kvm), a VM, its vCPUs, guest memory and statistics."""
