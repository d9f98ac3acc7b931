import platform

import pytest

from tests.conftest import kvm_usable


def pytest_collection_modifyitems(config, items):
    reason = None
    if platform.machine() != "x86_64":
        reason = "x86_64 payload tests need an x86_64 host"
    else:
        reason = kvm_usable()
    if reason:
        for item in items:
            if "tests/x86_64/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))
