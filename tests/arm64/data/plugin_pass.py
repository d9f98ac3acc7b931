# Copied into a temporary directory as test_*.py and run by an inner pytest (tests/arm64/test_testing.py).
# Configured from the command line: --pyvmm-kernel $PYVMM_TEST_L2_KERNEL --pyvmm-initrd $PYVMM_TEST_L2_INITRD.
import pytest


@pytest.mark.pyvmm(memory="512M", append="panic=-1")
def test_the_guest_shell_answers(pyvmm_machine):
    pyvmm_machine.console.expect("PYVMM-L2-USERSPACE-OK", timeout=400)
    pyvmm_machine.console.expect("# ", timeout=60)
    assert pyvmm_machine.run("echo $((6 * 7))", timeout=60) == (0, "42\n")
    status, output = pyvmm_machine.run("cat /sys/devices/system/cpu/online; false", timeout=60)
    assert (status, output) == (1, "0-1\n")
    assert pyvmm_machine.stats()["vcpus"][0]["exits"] > 0


pytestmark = pytest.mark.pyvmm(cpus=2)
