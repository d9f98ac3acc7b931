/*
 * exit_loop: the smallest KVM VMM that runs pyvmm's x86_64 `exits` guest, as a measuring stick for pyvmm's run loop.
 *
 * Same machine as pyvmm (docs/MACHINES.md): RAM at guest-physical 0, the flat real-mode payload at 0x10000,
 * CS = DS = ES = SS = 0x1000 (base 0x10000), IP = 0, SP = 0xFFF0, in-kernel irqchip and PIT (KVM_SET_TSS_ADDR,
 * KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2). The loop answers the test device's ARG read (port 0x508) with N once
 * (then 0, like pyvmm), ignores every other OUT, answers other INs with all-ones, and stops at the EXIT port
 * (0x500) with the written status. No device model, no threads, no signals: just KVM_RUN and a switch.
 *
 * Usage: exit_loop PAYLOAD N [MEMORY_MIB]   (prints the number of userspace exits on stderr)
 * Built by benchmarks/exit_roundtrip.py with: gcc -O2 -o exit_loop exit_loop.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOAD_ADDR 0x10000UL
#define PORT_EXIT 0x500
#define PORT_ARG 0x508

static void die(const char *what) {
	fprintf(stderr, "exit_loop: %s: %s\n", what, strerror(errno));
	exit(70);
}

static void set_seg(struct kvm_segment *seg, uint16_t selector) {
	seg->selector = selector;
	seg->base = (uint64_t)selector << 4;
	seg->limit = 0xFFFF;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: exit_loop PAYLOAD N [MEMORY_MIB]\n");
		return 64;
	}
	const char *payload = argv[1];
	uint32_t arg = (uint32_t)strtoul(argv[2], NULL, 0);
	size_t mem_size = (argc > 3 ? strtoul(argv[3], NULL, 0) : 256) << 20;

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000UL) < 0) die("KVM_SET_TSS_ADDR");
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
	struct kvm_pit_config pit = {.flags = 0};
	if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");

	uint8_t *ram = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED) die("mmap RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)(uintptr_t)ram};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

	int fd = open(payload, O_RDONLY | O_CLOEXEC);
	if (fd < 0) die(payload);
	ssize_t got = read(fd, ram + LOAD_ADDR, 0xA0000 - LOAD_ADDR);
	if (got <= 0) die("read payload");
	close(fd);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
	set_seg(&sregs.cs, LOAD_ADDR >> 4);
	set_seg(&sregs.ds, LOAD_ADDR >> 4);
	set_seg(&sregs.es, LOAD_ADDR >> 4);
	set_seg(&sregs.ss, LOAD_ADDR >> 4);
	set_seg(&sregs.fs, LOAD_ADDR >> 4);
	set_seg(&sregs.gs, LOAD_ADDR >> 4);
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
	struct kvm_regs regs = {.rip = 0, .rsp = 0xFFF0, .rflags = 0x2};
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

	unsigned long exits = 0;
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) continue;
			die("KVM_RUN");
		}
		exits++;
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				if (run->io.port == PORT_EXIT) {
					fprintf(stderr, "exit_loop: %lu exits\n", exits);
					return data[0];
				}
			} else if (run->io.port == PORT_ARG && run->io.size == 4) {
				memcpy(data, &arg, 4);
				arg = 0; /* one argument: later reads see "none left", as in pyvmm */
			} else {
				memset(data, 0xFF, (size_t)run->io.size * run->io.count);
			}
			break;
		}
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write) memset(run->mmio.data, 0xFF, sizeof(run->mmio.data));
			break;
		case KVM_EXIT_HLT:
		case KVM_EXIT_SHUTDOWN:
			fprintf(stderr, "exit_loop: guest stopped (exit reason %u) after %lu exits\n", run->exit_reason, exits);
			return 1;
		default:
			fprintf(stderr, "exit_loop: unhandled exit reason %u\n", run->exit_reason);
			return 70;
		}
	}
}
