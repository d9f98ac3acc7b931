#!/bin/busybox sh
# /init of the L2 test guest (booted by pyvmm inside the lane). Contract: tests/arm64/README.md.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/lane.order 2>/dev/null); do
    insmod "/lib/modules/$m.ko" 2>/dev/null && echo "pyvmm-l2: loaded $m"
done
echo "PYVMM-L2-USERSPACE-OK"
cmd=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyvmm.cmd=*) cmd="${word#pyvmm.cmd=}" ;;
    esac
done
if [ -n "$cmd" ]; then
    script="$(echo "$cmd" | base64 -d 2>/dev/null)"
    if [ -z "$script" ]; then
        echo "PYVMM-L2-CMD-BAD pyvmm.cmd is not base64"
        status=127
    else
        sh -c "$script"
        status=$?
    fi
    echo "PYVMM-L2-CMD-EXIT $status"
else
    setsid cttyhack sh
fi
sync
poweroff -f
