"""`hafs carp encode|decode` through the real entry point: vectors, errors, arbitrary bytes."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafs.cli import main
from tests.unit.test_carp_wire import VECTOR_IDS, VECTORS, Vector

GOOD_HEX = VECTORS[0].header.hex()  # vhid 1, pass testok, 172.21.0.211, counter 0:0
NOT_AN_ADDRESS = "'{}' does not appear to be an IPv4 or IPv6 address"
PASS_WITHOUT_ADDR = "--pass: give it together with --addr to check the digest, or neither"


def run(*argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``hafs argv...``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def encode_argv(v: Vector) -> list[str]:
    argv = ["carp", "encode", "--vhid", str(v.vhid), "--advskew", str(v.advskew)]
    argv += ["--advbase", str(v.advbase), "--pass", v.passphrase]
    for addr in v.addrs:
        argv += ["--addr", str(addr)]
    argv += ["--counter", f"{v.hi}:{v.lo}", "--demotion", str(v.demotion)]
    return argv + (["--ucarp"] if v.impl == "ucarp" else [])


def fields(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines())


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_encode_vector(v: Vector) -> None:
    assert run(*encode_argv(v)) == (0, v.header.hex() + "\n", "")


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_decode_vector(v: Vector) -> None:
    argv = ["carp", "decode", v.header.hex(), "--pass", v.passphrase]
    for addr in v.addrs:
        argv += ["--addr", str(addr)]
    code, out, err = run(*argv)
    assert (code, err) == (0, "")
    assert fields(out) == {
        "version": "2",
        "type": "1",
        "vhid": str(v.vhid),
        "advskew": str(v.wire_skew),
        "advbase": str(v.advbase),
        "authlen": "7",
        "checksum": f"0x{v.header[6:8].hex()}",
        "counter": f"{v.hi}:{v.lo}",
        "digest": v.md.hex(),
        "verdict": "valid",
    }
    assert list(fields(out))[-1] == "verdict"


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_decode_vector_json(v: Vector) -> None:
    argv = ["carp", "decode", v.header.hex(), "--json", "--pass", v.passphrase]
    for addr in v.addrs:
        argv += ["--addr", str(addr)]
    code, out, _ = run(*argv)
    report = json.loads(out)
    assert code == 0
    assert report["vhid"] == v.vhid
    assert report["advskew"] == v.wire_skew
    assert report["counter"] == f"{v.hi}:{v.lo}"
    assert report["digest"] == v.md.hex()
    assert (report["verdict"], report["reason"]) == ("valid", None)


def test_decode_without_pass_only_parses() -> None:
    code, out, _ = run("carp", "decode", GOOD_HEX)
    assert code == 0
    assert out.splitlines()[-1] == "verdict: parsed, digest not checked"


def test_decode_accepts_spaced_hex() -> None:
    spaced = " ".join(GOOD_HEX[i : i + 4] for i in range(0, len(GOOD_HEX), 4))
    assert run("carp", "decode", spaced) == run("carp", "decode", GOOD_HEX)


@pytest.mark.parametrize(
    ("hex_input", "extra", "verdict"),
    [
        (GOOD_HEX, ["--pass", "wrong", "--addr", "172.21.0.211"], "dropped (bad digest)"),
        (GOOD_HEX, ["--pass", "testok", "--addr", "172.21.0.212"], "dropped (bad digest)"),
        ("2102" + GOOD_HEX[4:], [], "dropped (bad checksum)"),
        ("31" + GOOD_HEX[2:12] + "e0ba" + GOOD_HEX[16:], [], "dropped (bad version)"),
    ],
    ids=["wrong-pass", "wrong-addr", "checksum", "version"],
)
def test_decode_dropped(hex_input: str, extra: list[str], verdict: str) -> None:
    code, out, err = run("carp", "decode", hex_input, *extra)
    assert (code, err) == (1, "")
    assert len(out.splitlines()) == 10
    assert out.splitlines()[-1] == f"verdict: {verdict}"


def test_decode_too_short_prints_only_the_verdict() -> None:
    assert run("carp", "decode", "2101") == (1, "verdict: dropped (too short)\n", "")
    code, out, _ = run("carp", "decode", "", "--json")
    report = json.loads(out)
    assert code == 1
    assert (report["verdict"], report["reason"], report["vhid"]) == ("dropped", "too short", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vhid", "0"], "--vhid: must be 1..255, got '0'"),
        (["--vhid", "one"], "--vhid: must be 1..255, got 'one'"),
        (["--advskew", "300"], "--advskew: must be 0..254, got '300'"),
        (["--advbase", "0"], "--advbase: must be 1..255, got '0'"),
        (["--demotion", "-1"], "--demotion: must be 0..2147483647, got '-1'"),
        (["--counter", "7"], "--counter: must be HI:LO, two integers 0..4294967295, got '7'"),
        (["--counter", "4294967296:0"], "--counter: must be 0..4294967295, got '4294967296'"),
        (["--counter", "1:2:3"], "--counter: must be 0..4294967295, got '2:3'"),
        (["--addr", "10.0.0.x"], f"--addr: {NOT_AN_ADDRESS.format('10.0.0.x')}"),
        (["--ucarp", "--pass", ""], "--ucarp: ucarp refuses an empty pass"),
        (
            ["--ucarp", "--pass", "abcdefghijklmnopqrst"],
            "--ucarp: ucarp refuses a pass of 20 bytes or more (this one has 20)",
        ),
        (
            ["--ucarp", "--addr", "10.0.0.2"],
            "--ucarp: ucarp hashes exactly one IPv4 address, this vhid has 2 IPv4 and 0 IPv6",
        ),
    ],
)
def test_encode_bad_input_is_one_line_exit_2(argv: list[str], message: str) -> None:
    base = ["carp", "encode", "--vhid", "1", "--pass", "testok", "--addr", "10.0.0.1"]
    assert run(*base, "--counter", "0:0", *argv) == (2, "", f"hafs: error: {message}\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["zz"], "HEX: not pairs of hex digits: 'zz'"),
        (["abc"], "HEX: not pairs of hex digits: 'abc'"),
        (["0" * 51], "HEX: not pairs of hex digits: '" + "0" * 40 + "...'"),
        ([GOOD_HEX, "--pass", "testok"], PASS_WITHOUT_ADDR),
        ([GOOD_HEX, "--addr", "10.0.0.1"], PASS_WITHOUT_ADDR),
        ([GOOD_HEX, "--pass", "x", "--addr", "nope"], f"--addr: {NOT_AN_ADDRESS.format('nope')}"),
    ],
)
def test_decode_bad_input_is_one_line_exit_2(argv: list[str], message: str) -> None:
    assert run("carp", "decode", *argv) == (2, "", f"hafs: error: {message}\n")


def test_encode_warns_about_passes_ucarp_refuses() -> None:
    argv = ["carp", "encode", "--vhid", "1", "--addr", "172.21.0.211", "--counter", "0:42"]
    code, out, err = run(*argv, "--pass", "abcdefghijklmnopqrsTAIL")
    assert (code, out) == (0, VECTORS[16].header.hex() + "\n")  # same key as the 19-byte pass
    assert err == "hafs: warning: --pass: only its first 19 of 23 bytes count; ucarp refuses it\n"
    code, _, err = run(*argv, "--pass", "")
    assert code == 0
    assert err == "hafs: warning: --pass: empty, the key is all zeros; ucarp refuses it\n"


def test_encode_defaults_are_advskew_0_advbase_1() -> None:
    v = VECTORS[0]
    argv = ["carp", "encode", "--vhid", "1", "--pass", "testok", "--addr", "172.21.0.211"]
    assert run(*argv, "--counter", "0:0") == (0, v.header.hex() + "\n", "")


@pytest.mark.parametrize("argv", [["carp"], ["carp", "encode"], ["carp", "decode"]])
def test_help(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(*argv, "--help")
    assert exit_info.value.code == 0


@given(st.binary(max_size=64))
def test_decode_gives_a_verdict_for_any_bytes(data: bytes) -> None:
    code, out, err = run("carp", "decode", data.hex(), "--pass", "testok", "--addr", "10.0.0.1")
    assert (code, err) == (1, "")  # no random bytes carry a valid digest
    assert out.splitlines()[-1].startswith("verdict: dropped (")
    code, out, err = run("carp", "decode", data.hex(), "--json")
    assert code in (0, 1)
    assert err == ""
    assert json.loads(out)["verdict"] in ("dropped", "parsed, digest not checked")
