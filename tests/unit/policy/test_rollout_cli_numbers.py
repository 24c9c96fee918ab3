"""`bastion policy rollout` numbers: NaN and infinities are usage errors (exit 2) before any
request, where they were a traceback ("Out of range float values are not JSON compliant")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fixtures.local_http import Handler, LocalHttp

from bastion._cli import main

_ROLLOUT = {
    "id": "r-1",
    "policy": "demo",
    "version": 2,
    "stable_version": 1,
    "percent": 12.5,
    "stickiness": "agent",
    "state": "running",
    "counts": {side: {"decisions": 0, "denies": 0, "errors": 0} for side in ("canary", "stable")},
    "reason": "",
}


class _PolicyAdmin(LocalHttp):
    """The policy service's admin REST as far as `rollout` goes: it keeps every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        admin = self

        class AdminHandler(Handler):
            def do_POST(self) -> None:
                admin.bodies.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.answer(201, orjson.dumps(_ROLLOUT))

        super().__init__(AdminHandler)

    def __enter__(self) -> _PolicyAdmin:
        super().__enter__()
        return self


@pytest.fixture
def admin() -> Iterator[_PolicyAdmin]:
    with _PolicyAdmin() as server:
        yield server


def _rollout(admin: _PolicyAdmin, *options: str) -> int:
    return main(["policy", "rollout", "demo", "2", "--addr", admin.addr, "--token", "t", *options])


_NOT_FINITE = [
    ["--percent", "nan"],
    ["--percent", "inf"],
    ["--percent=-inf"],
    ["--percent", "NaN"],
    ["--percent", "1e999"],  # float() overflows it to inf
    ["--percent", "10", "--rollback-on-deny-rate", "nan"],
    ["--percent", "10", "--rollback-on-error-rate", "infinity"],
]


@pytest.mark.parametrize("options", _NOT_FINITE, ids=[" ".join(options) for options in _NOT_FINITE])
def test_a_rollout_number_that_is_not_finite_is_a_usage_error_and_nothing_is_sent(
    admin: _PolicyAdmin, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _rollout(admin, *options)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bastion policy rollout: error: argument --")
    assert error.endswith("is not a finite number")
    assert admin.bodies == []


def test_a_rollout_option_that_is_not_a_number_says_so(admin: _PolicyAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _rollout(admin, "--percent", "ten")
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith("argument --percent: 'ten' is not a number")
    assert admin.bodies == []


def test_finite_rollout_numbers_are_sent_as_given(admin: _PolicyAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    assert _rollout(admin, "--percent", "12.5", "--rollback-on-deny-rate", "0.2", "--rollback-on-error-rate", "-0") == 0
    [body] = admin.bodies
    assert (body["percent"], body["rollback_on"]) == (12.5, {"deny_rate": 0.2, "error_rate": -0.0})
    assert "demo v2 (stable v1) 12.5% by agent" in capsys.readouterr().out
