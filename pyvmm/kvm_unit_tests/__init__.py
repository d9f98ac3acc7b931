"""Running kvm-unit-tests (the KVM project's guest-side test suite) under pyvmm, as its own run_tests.sh would.

unittests: the unittests.cfg format; shell: the bit of bash its values use, evaluated in Python; environ: the environ
file kvm-unit-tests' initrd_create writes; plan: which tests run and with which `pyvmm run` command; execute: running
one test and its verdict; suite: the whole run and its report.
"""
