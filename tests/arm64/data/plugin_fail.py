# Deliberately failing (tests/arm64/test_testing.py checks that the report carries the guest's console).
import pytest


@pytest.mark.pyvmm(memory="512M", append="panic=-1")
def test_a_kernel_regression(pyvmm_machine):
    pyvmm_machine.console.expect("PYVMM-L2-USERSPACE-OK", timeout=400)
    pyvmm_machine.console.expect("# ", timeout=60)
    status, output = pyvmm_machine.run("uname -r; exit_code_of_a_failing_check=3; (exit 3)", timeout=60)
    assert status == 0, f"the in-guest check failed with {status}"
