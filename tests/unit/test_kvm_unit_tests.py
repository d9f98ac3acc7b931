"""The kvm-unit-tests runner's logic (pyvmm.kvm_unit_tests): cfg parsing, selection, environ, commands, verdicts.

No KVM here: a run is exercised with a stand-in VMM script that prints what a test binary would.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from pyvmm.errors import MissingFileError, UsageError
from pyvmm.kvm_unit_tests import environ, execute, plan, shell, suite, unittests
from pyvmm.kvm_unit_tests.plan import Selection

# The project's copy of the arm64 build sits in ../shared next to the checkout (or next to its worktrees' folder).
ROOT = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (ROOT.parent / "shared/kvm-unit-tests", ROOT.parent.parent / "shared/kvm-unit-tests")
               if p.is_dir()), ROOT.parent / "shared/kvm-unit-tests")

CFG = textwrap.dedent('''\
    # a comment
    [selftest-setup]
    file = selftest.flat
    smp = 2
    test_args = 'setup smp=2 mem=256'
    qemu_params = -m 256
    kvmtool_params = --mem 256
    groups = selftest

    [gicv2-ipi]
    file = gic.flat
    smp = $((($MAX_SMP < 8)?$MAX_SMP:8))
    test_args = ipi
    kvmtool_params = --irqchip=gicv2
    groups = gic

    [pmu-cycle-counter]
    file = pmu.flat
    groups = pmu
    test_args = "cycle-counter 0"
    kvmtool_params = --pmu

    [its-migration]
    file = gic.flat
    groups = its migration
    disabled_if = [[ "$TARGET" != qemu ]]
    arch = arm64

    [micro-bench]
    file = micro-bench.flat
    smp = 2
    groups = nodefault micro-bench
    accel = kvm
    arch = arm64

    [arm-only]
    file = selftest.flat
    arch = arm

    [tcg-only]
    file = selftest.flat
    accel = tcg

    [timer]
    file = timer.flat
    groups = timer
    timeout = 10s

    [legacy]
    file = selftest.flat
    extra_params = -append 'setup smp=3 mem=512' -smp 3 -m 512 -machine virt,gic-version=2 -icount 0
    groups = legacy

    [multi]
    file = selftest.flat
    kvmtool_params = """--mem 128 \\
    --pmu
    --irqchip=gicv3"""
    groups = legacy
    ''')


@pytest.fixture
def kut_dir(tmp_path: Path) -> Path:
    (tmp_path / "arm").mkdir()
    for name in ("selftest", "gic", "pmu", "micro-bench", "timer"):
        (tmp_path / "arm" / f"{name}.flat").write_bytes(b"\x00\x00\x00\x14" * 16)
    (tmp_path / "unittests.cfg").write_text(CFG)
    (tmp_path / "errata.txt").write_text(textwrap.dedent("""\
        #---------------:-------------------------------:-----------
        # commit        : minimum kernel                : summary
        9e3f7a296940    : 4.9                           : arm64: KVM: pmu: Fix AArch32 cycle counter access
        8c58be34494b    : 6.13                          : a fix this host lacks
        """))
    return tmp_path


def by_name(tests):
    return {test.name: test for test in tests}


def test_cfg_sections_and_keys_are_read_as_upstream_reads_them():
    tests = by_name(unittests.parse(CFG))
    assert list(tests)[:3] == ["selftest-setup", "gicv2-ipi", "pmu-cycle-counter"]
    setup = tests["selftest-setup"]
    assert (setup.file, setup.smp, setup.test_args, setup.groups) == ("selftest.flat", "2", "'setup smp=2 mem=256'",
                                                                       ("selftest",))
    assert setup.params == {"qemu_params": "-m 256", "kvmtool_params": "--mem 256"}
    assert tests["its-migration"].groups == ("its", "migration")
    assert tests["timer"].timeout == "10s"
    assert tests["micro-bench"].smp == "2" and tests["pmu-cycle-counter"].smp == "1"
    # Triple quotes span lines; a trailing backslash joins a line to the next.
    assert tests["multi"].params["kvmtool_params"] == "--mem 128 --pmu\n--irqchip=gicv3"


def test_cfg_errors_are_one_line_and_say_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="more than once"):
        unittests.parse("[a]\nfile = x\n[a]\n")
    with pytest.raises(UsageError, match="never closes"):
        unittests.parse('[a]\nkvmtool_params = """--pmu\n')
    with pytest.raises(MissingFileError, match="not a directory"):
        unittests.load(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="no unittests.cfg"):
        unittests.load(tmp_path)
    (tmp_path / "unittests.cfg").write_text("# nothing\n")
    with pytest.raises(UsageError, match="no tests"):
        unittests.load(tmp_path)


def test_cfg_in_a_source_tree_is_found_under_arm(tmp_path):
    (tmp_path / "arm").mkdir()
    (tmp_path / "arm" / "unittests.cfg").write_text("[t]\nfile = t.flat\n")
    path, tests = unittests.load(tmp_path)
    assert path == tmp_path / "arm" / "unittests.cfg" and tests[0].name == "t"


@pytest.mark.parametrize("text, words", [
    ("$MAX_SMP", ["6"]),
    ("$((($MAX_SMP < 8)?$MAX_SMP:8))", ["6"]),
    ("$((($MAX_SMP < 3)?$MAX_SMP:3))", ["3"]),
    ("'setup smp=2 mem=256'", ["setup smp=2 mem=256"]),
    ('"cycle-counter 0"', ["cycle-counter 0"]),
    ("--irqchip=gicv3-its --pmu", ["--irqchip=gicv3-its", "--pmu"]),
    ("", []),
])
def test_values_expand_as_bash_expands_them(text, words):
    assert shell.words(text, {"MAX_SMP": "6"}, "v") == words


@pytest.mark.parametrize("text, words", [
    ("a 'b c' \"d $MAX_SMP\" e\\ f", ["a", "b c", "d 6", "e f"]),
    ("${MAX_SMP}x $UNSET \"\"", ["6x", ""]),
    ("$((2 + 3 * 4)) $((-(1 + 1))) $((7 / 2)) $((7 % 3)) $((!0 && 1 || 0)) $((1 ? 2 ? 3 : 4 : 5))",
     ["14", "-2", "3", "1", "1", "3"]),
    ("--irqchip=gicv3 \"$EMPTY\"", ["--irqchip=gicv3", ""]),
])
def test_words_quotes_variables_and_arithmetic(text, words):
    assert shell.words(text, {"MAX_SMP": "6", "EMPTY": ""}, "v") == words


@pytest.mark.parametrize("text, message", [
    ("'unclosed", "single quote is not closed"),
    ('"unclosed', "double quote is not closed"),
    ("$(uname -r)", "command substitution"),
    ("`uname -r`", "beyond what pyvmm evaluates"),
    ("a; b", "beyond what pyvmm evaluates"),
    ("$((1 +))", "expected more"),
    ("$((X + 1))", "X is 'x', not a number"),
    ("$((1 / 0))", "division by zero"),
])
def test_what_pyvmm_does_not_evaluate_is_refused_in_one_line(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        shell.words(text, {"X": "x"}, "[t] smp")


@pytest.mark.parametrize("text, variables, result", [
    ('[[ "$TARGET" != qemu ]]', {"TARGET": "kvmtool"}, True),
    ('[[ "$TARGET" != qemu ]]', {"TARGET": "qemu"}, False),
    ('[[ $TARGET == kvm* ]]', {"TARGET": "kvmtool"}, True),
    ("[ $MAX_SMP -lt 4 ] && true", {"MAX_SMP": "2"}, True),
    ("test $MAX_SMP -ge 4 || [[ -z $UNSET ]]", {"MAX_SMP": "2"}, True),
    ("false || ! [[ -n x ]]", {}, False),
    ("true && false", {}, False),
])
def test_disabled_if_conditions(text, variables, result):
    assert shell.condition(text, variables) is result


def test_unknown_commands_in_conditions_are_refused():
    with pytest.raises(UsageError, match="only \\[\\[ \\]\\], \\[ \\], test"):
        shell.condition("grep -q x /proc/cpuinfo", {})


def test_selection_by_name_and_group_and_unknown_ones():
    tests = unittests.parse(CFG)
    assert len(plan.select(tests, Selection(), "cfg")) == len(tests)
    names = [t.name for t in plan.select(tests, Selection(names=("timer",), groups=("gic",)), "cfg")]
    assert names == ["gicv2-ipi", "timer"]
    with pytest.raises(UsageError, match="no test nosuch"):
        plan.select(tests, Selection(names=("nosuch",)), "cfg")
    with pytest.raises(UsageError, match="no group nogroup .*groups: gic"):
        plan.select(tests, Selection(groups=("nogroup",)), "cfg")


def plan_all(kut_dir, selection=Selection(), max_smp=6, **kwargs):
    options = suite.SuiteOptions(kut_dir, selection, max_smp=max_smp, kernel_release="6.12.48+deb13-arm64",
                                 environment={}, **kwargs)
    return suite.prepare(options)


def test_filters_say_why_a_test_is_skipped(kut_dir):
    planned = by_name(plan_all(kut_dir).tests)
    assert planned["its-migration"].skip == 'disabled because: [[ "$TARGET" != qemu ]]'
    assert planned["micro-bench"].skip == "test marked as manual run only"
    assert planned["arm-only"].skip == "arm only"
    assert planned["tcg-only"].skip == "tcg only, but ACCEL=kvm"
    assert planned["selftest-setup"].skip is None
    # nodefault tests run when asked for by name, by group, or with -a.
    for selection in (Selection(names=("micro-bench",)), Selection(groups=("micro-bench",)), Selection(run_all=True)):
        assert by_name(plan_all(kut_dir, selection).tests)["micro-bench"].skip is None


def test_check_parameter_compares_a_file(kut_dir, tmp_path):
    flag = tmp_path / "flag"
    flag.write_text("Y\n")
    test = unittests.UnitTest("t", file="selftest.flat", check=f"{flag}=Y")
    folders = [kut_dir / "arm"]
    assert plan.plan(test, Selection(), folders, {}).skip is None
    test.check = f"{flag}=N"
    assert plan.plan(test, Selection(), folders, {}).skip == f"{flag} not equal to N"


def test_commands_use_kvmtools_spelling_and_the_expanded_values(kut_dir):
    suite_ = plan_all(kut_dir, run_options=["--no-stdin", "--wfx-trap-threshold", "0"])
    planned = by_name(suite_.tests)
    env = Path("/tmp/env")
    assert planned["selftest-setup"].command(env, suite_.options.run_options) == [
        "run", "--kernel", str(kut_dir / "arm" / "selftest.flat"), "--cpus", "2", "--params", "setup smp=2 mem=256",
        "--nodefaults", "--network", "mode=none", "--loglevel=warning", "--mem", "256", "--initrd", "/tmp/env",
        "--no-stdin", "--wfx-trap-threshold", "0"]  # the run options last
    gic = planned["gicv2-ipi"]
    assert (gic.cpus, gic.args, gic.options) == (6, "ipi", ["--irqchip=gicv2"])
    assert by_name(plan_all(kut_dir, max_smp=12).tests)["gicv2-ipi"].cpus == 8
    pmu = planned["pmu-cycle-counter"]
    assert (pmu.cpus, pmu.args, pmu.options) == (1, "cycle-counter 0", ["--pmu"])
    # No test_args: no --params at all, as upstream (the test's argv is then empty).
    assert "--params" not in planned["timer"].command(env, [])
    assert (planned["timer"].timeout, planned["selftest-setup"].timeout) == (10.0, 90.0)
    legacy = planned["legacy"]
    assert (legacy.cpus, legacy.args, legacy.options) == (3, "setup smp=3 mem=512", ["--mem", "512", "--irqchip=gicv2"])
    assert planned["multi"].options == ["--mem", "128", "--pmu", "--irqchip=gicv3"]


def test_timeouts_parse_as_timeout1_durations(kut_dir):
    assert [plan.parse_duration(text, "t") for text in ("90s", "10", "2m", "1.5h", "1d")] == [90, 10, 120, 5400, 86400]
    with pytest.raises(UsageError, match="not a duration"):
        plan.parse_duration("soon", "--timeout")
    assert by_name(plan_all(kut_dir, timeout="300").tests)["timer"].timeout == 300


def test_a_missing_binary_or_a_bad_smp_is_reported(kut_dir):
    (kut_dir / "arm" / "pmu.flat").unlink()
    missing = by_name(plan_all(kut_dir).tests)["pmu-cycle-counter"].missing
    assert missing.startswith("pmu.flat is not in ") and "build kvm-unit-tests" in missing
    (kut_dir / "unittests.cfg").write_text("[t]\nfile = selftest.flat\nsmp = lots\n")
    with pytest.raises(UsageError, match="not a vCPU count"):
        plan_all(kut_dir)


@pytest.mark.parametrize("release, minimum, has", [
    ("6.12.48+deb13-arm64", "4.9", True), ("6.12.48+deb13-arm64", "6.13", False),
    ("6.12.48+deb13-arm64", "6.12", True), ("6.12.48+deb13-arm64", "6.12.48", True),
    ("6.12.48+deb13-arm64", "6.12.49", False), ("6.12.0", "6.12.0-3", False), ("6.12.0-3", "6.12.0-2", True),
    ("6.12", "6.12.1", False), ("6.12", "6.12.0", True), ("7.0.0", "6.20", True),
])
def test_errata_versions_compare_as_env_generate_errata(release, minimum, has):
    assert environ.KernelVersion.parse(release).has(minimum, "errata.txt") is has


def test_environ_file_is_initrd_creates(kut_dir):
    text = plan_all(kut_dir).environ_text
    assert text == textwrap.dedent("""\
        TARGET=kvmtool
        KERNEL_VERSION_STRING=6.12.48+deb13-arm64
        KERNEL_VERSION=6
        KERNEL_PATCHLEVEL=12
        KERNEL_SUBLEVEL=48
        KERNEL_EXTRAVERSION=
        ERRATA_8c58be34494b=n
        ERRATA_9e3f7a296940=y
        """)
    # The runner's environment wins for an erratum; -a adds ERRATA_FORCE; a user's environ file adds its variables.
    extra = kut_dir / "my.env"
    extra.write_text("FOO=bar\nKERNEL_VERSION=99\n# not a variable\n")
    options = suite.SuiteOptions(kut_dir, Selection(run_all=True), max_smp=2, kernel_release="6.1.0",
                                 environment={"ERRATA_8c58be34494b": "y", "HOME": "/root"}, environ_extra=extra)
    lines = suite.prepare(options).environ_text.splitlines()
    assert lines[1:] == ["KERNEL_VERSION_STRING=6.1.0", "KERNEL_VERSION=6", "KERNEL_PATCHLEVEL=1", "KERNEL_SUBLEVEL=0",
                         "KERNEL_EXTRAVERSION=", "FOO=bar", "ERRATA_8c58be34494b=y", "ERRATA_9e3f7a296940=y",
                         "ERRATA_FORCE=y"]
    with pytest.raises(UsageError, match="bad minimum kernel version"):
        environ.KernelVersion.parse("6.1.0").has("six", "errata.txt")


@pytest.mark.parametrize("console, errors, returncode, expected", [
    ("PASS: a\nSUMMARY: 1 tests\nEXIT: STATUS=1\n", "", 0, ("PASS", "", 1)),
    ("SKIP: a\nEXIT: STATUS=77\n", "", 0, ("SKIP", "", 77)),
    ("FAIL: a\nEXIT: STATUS=3\n", "", 0, ("FAIL", "", 3)),
    ("EXIT: STATUS=1\nEXIT: STATUS=3\n", "", 0, ("PASS", "", 1)),  # the first EXIT line decides
    ("half a test\n", "pyvmm: error: --pmu: this host's KVM has no PMU\n", 69,
     ("FAIL", "no EXIT: STATUS line; pyvmm: error: --pmu: this host's KVM has no PMU", None)),
    ("", "", 0, ("FAIL", "no EXIT: STATUS line; pyvmm exited with 0", None)),
    ("", "pyvmm: error: --pmu: this host's KVM has no PMU\n", 69,
     ("SKIP", "pyvmm: error: --pmu: this host's KVM has no PMU", None)),  # the host lacks what the test needs
    ("started\n", "", None, ("FAIL", "timeout; duration=90s", None)),
    ("EXIT: STATUS=1\n", "", None,
     ("FAIL", "timeout; duration=90s: the test ended (EXIT: STATUS=1) but the VM did not stop", 1)),
])
def test_verdict_from_the_exit_line(console, errors, returncode, expected):
    assert execute.verdict(console, errors, returncode, "90s") == expected


def test_a_silent_timeout_says_the_build_may_be_for_another_map():
    verdict, reason, _ = execute.verdict("", "", None, "10s")
    assert verdict == "FAIL" and "printed nothing" in reason and "0x9000000" in reason


def test_summary_is_the_tests_own_line():
    assert execute.summary("PASS: x\nSUMMARY: 14 tests, 1 skipped\r\nEXIT: STATUS=1\n") == "14 tests, 1 skipped"
    assert execute.summary("SUMMARY: old\n" + "x\n" * 5) == ""


# A stand-in for `python -m pyvmm`: behaves like a test binary according to --params, records its argv.
FAKE_VMM = textwrap.dedent('''\
    import json, sys, time
    argv = sys.argv[1:]
    params = argv[argv.index("--params") + 1] if "--params" in argv else ""
    with open(sys.argv[0] + ".calls", "a") as calls:
        calls.write(json.dumps(argv) + "\\n")
    if "hang" in params:
        print("started", flush=True)
        time.sleep(60)
    if "silent" in params:
        time.sleep(60)
    status = {"pass": 1, "skip": 77, "fail": 3}.get(params.split()[0] if params else "pass")
    print(f"SUMMARY: 2 tests\\nEXIT: STATUS={status}", flush=True)
    ''')


def test_a_run_reports_each_test_and_fails_on_any_fail(tmp_path):
    (tmp_path / "arm").mkdir()
    (tmp_path / "arm" / "t.flat").write_bytes(b"\0" * 64)
    (tmp_path / "unittests.cfg").write_text(textwrap.dedent("""\
        [good]
        file = t.flat
        test_args = pass
        [skipped]
        file = t.flat
        test_args = skip
        [bad]
        file = t.flat
        test_args = fail
        [hangs]
        file = t.flat
        test_args = hang
        timeout = 1
        [silent]
        file = t.flat
        test_args = silent
        timeout = 1
        [migration]
        file = t.flat
        disabled_if = [[ "$TARGET" != qemu ]]
        [absent]
        file = absent.flat
        """))
    fake = tmp_path / "fake_vmm.py"
    fake.write_text(FAKE_VMM)
    options = suite.SuiteOptions(tmp_path, max_smp=2, environment={}, run_options=["--halt-poll-ns", "0"],
                                 log_dir=tmp_path / "logs")
    prepared = suite.prepare(options)
    lines: list[str] = []
    results, seconds = suite.timed(lambda: suite.run(prepared, lambda r: lines.append(r.line()),
                                                     vmm=[sys.executable, str(fake)]))
    assert lines[:3] == ["PASS good (2 tests)", "SKIP skipped (2 tests)", "FAIL bad (2 tests)"]
    assert lines[3] == "FAIL hangs (timeout; duration=1)"
    assert lines[4].startswith("FAIL silent (timeout; duration=1, and the test printed nothing")
    assert lines[5] == 'SKIP migration (disabled because: [[ "$TARGET" != qemu ]])'
    assert lines[6].startswith("FAIL absent (absent.flat is not in ")
    assert suite.exit_status(results) == 1 and suite.exit_status(results[:2]) == 0
    assert suite.summary_line(results, seconds).startswith("7 tests: 1 PASS, 2 SKIP, 4 FAIL (")
    data = json.loads(suite.as_json(prepared, results, seconds))
    assert [r["verdict"] for r in data["results"]] == ["PASS", "SKIP", "FAIL", "FAIL", "FAIL", "SKIP", "FAIL"]
    assert data["failed"] == 4 and data["results"][0]["status"] == 1
    calls = [json.loads(line) for line in (tmp_path / "fake_vmm.py.calls").read_text().splitlines()]
    assert len(calls) == 5 and calls[0][-2:] == ["--halt-poll-ns", "0"]
    environ_file = calls[0][calls[0].index("--initrd") + 1]
    assert not Path(environ_file).exists()  # the environ file lives as long as the run
    assert "EXIT: STATUS=1" in (tmp_path / "logs" / "good.log").read_text()


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
def test_the_shipped_suite_plans_every_test():
    prepared = suite.prepare(suite.SuiteOptions(SHARED, Selection(run_all=True), max_smp=2, environment={}))
    planned = by_name(prepared.tests)
    assert len(planned) == 42 and not any(p.missing for p in planned.values())
    assert planned["its-introspection"].options == ["--irqchip=gicv3-its"]
    assert sorted(name for name, p in planned.items() if p.skip) == [
        "debug-bp-migration", "debug-sstep-migration", "debug-wp-migration", "its-migrate-unmapped-collection",
        "its-migration", "its-pending-migration", "pci-test"]


def test_the_host_must_be_arm64_with_kvm(tmp_path):
    from pyvmm.errors import KvmUnavailableError

    with pytest.raises(KvmUnavailableError, match="this is x86_64.*tests/arm64/lane"):
        suite.check_host("x86_64")
    with pytest.raises(KvmUnavailableError, match="no KVM"):
        suite.check_host("aarch64", str(tmp_path / "kvm"))


def test_command_line_errors_are_one_line(kut_dir, tmp_path):
    from tests.conftest import run_pyvmm

    for args, status, message in [
        ([str(tmp_path / "nowhere")], 66, "is not a directory"),
        ([str(tmp_path / "arm")], 66, "has no unittests.cfg"),
        ([str(kut_dir), "nosuch"], 64, "has no test nosuch: list them with --list"),
        ([str(kut_dir), "-g", "nosuch"], 64, "has no group nosuch"),
        ([str(kut_dir), "--timeout", "soon"], 64, "--timeout: 'soon' is not a duration"),
    ]:
        result = run_pyvmm("kvm-unit-tests", *args)
        lines = result.stderr.decode().splitlines()
        assert (result.returncode, len(lines)) == (status, 1) and message in lines[0], (args, lines)


def test_list_shows_each_command_with_the_idle_options_forwarded(kut_dir):
    from tests.conftest import run_pyvmm

    result = run_pyvmm("kvm-unit-tests", str(kut_dir), "-l", "gicv2-ipi", "timer", "--wfx-trap-threshold", "0",
                       "--allow-fallback", "--cap-number", "ARM_DISABLE_EXITS=250", "--max-smp", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == (f"gicv2-ipi [gic] pyvmm run --kernel {kut_dir}/arm/gic.flat --cpus 4 --params ipi --nodefaults "
                        f"--network mode=none --loglevel=warning --irqchip=gicv2 --initrd ENVIRON --no-stdin "
                        f"--wfx-trap-threshold 0 --allow-fallback --cap-number ARM_DISABLE_EXITS=250")
    assert lines[1].startswith("timer [timer] pyvmm run") and len(lines) == 2


def test_idle_arguments_spell_back_only_what_was_given():
    from pyvmm.cli.kvm_unit_tests import idle_arguments

    assert idle_arguments({"wfx_trap_threshold": None, "wfx_passthrough": "", "allow_fallback": False,
                           "cap_numbers": ()}) == []
    assert idle_arguments({"wfx_passthrough": "wfi", "halt_poll_ns": "0", "cpu_affinity": "0=1"}) == [
        "--wfx-passthrough", "wfi", "--halt-poll-ns", "0", "--cpu-affinity", "0=1"]
