#!/bin/busybox sh
# /init of the emulated arm64 host (L1). Generated run settings come from /lane/run.env (written per run by the
# lane script): LANE_HOST_KIND, the PYVMM_* variables and the pytest argument list LANE_PYTEST_ARGS.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ip link set lo up 2>/dev/null
hostname pyvmm-lane

lane_end() {
    echo "PYVMM-LANE-RESULT $1"
    sync
    poweroff -f
    sleep 5
}

echo "PYVMM-LANE-L1-INIT $(uname -r) $(uname -m) uptime $(cut -d' ' -f1 /proc/uptime)"
. /lane/run.env

# Host modules (shipped only with the stock kernel, where tun/vhost/vsock are modules).
if [ -f /lib/modules/lane.order ]; then
    for m in $(cat /lib/modules/lane.order); do
        insmod "/lib/modules/$m.ko" 2>/dev/null || echo "lane: insmod $m failed"
    done
fi

if [ ! -c /dev/kvm ]; then
    echo "lane: /dev/kvm is missing in the emulated host; KVM lines from the kernel log:"
    dmesg | grep -i kvm
    lane_end 90
fi
dmesg | grep -i 'kvm \[' | grep -i -E 'hyp|vhe|initiali|wfx'

export PYVMM_IN_LANE=1
export PYVMM_LANE_HOST_KERNEL="$LANE_HOST_KIND $(uname -r)"
export HOME=/tmp PYTHONPATH=/lane/src:/lane/site PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/.hypothesis
cd /lane/src
if [ -n "$LANE_RUN" ]; then
    echo "lane: sh -c $LANE_RUN"
    sh -c "$LANE_RUN"
    lane_end $?
fi
echo "lane: python3 -m pytest $LANE_PYTEST_ARGS"
eval "set -- $LANE_PYTEST_ARGS"
python3 -m pytest "$@"
lane_end $?
