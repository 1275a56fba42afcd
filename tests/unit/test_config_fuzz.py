"""Config fuzz: every option, given a wrong-typed or out-of-range value, makes
``rpcworker --check-config`` exit 2 with one line naming the group and the option,
never a traceback.

The cases are generated from the options themselves (``rpcworker.config.opts.list_opts`` and
oslo.log's), so an option added later is fuzzed without anyone writing a case for it.
``main()`` runs in-process (the subprocess path is covered by tests/functional/test_cli.py);
``--check-config`` never opens a connection.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg, types

from rpcworker.cmd import daemon
from rpcworker.config import conffile, opts

BINDING = "b1"
#: a valid configuration each case changes one line of
BASE: dict[str, dict[str, str]] = {
    "DEFAULT": {"bindings": BINDING},
    "broker": {"hostname": "127.0.0.1"},
    f"binding:{BINDING}": {"type": "direct", "handler": "echo", "routing_key": "k"},
}


def _oslo_log_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """oslo.log's options that rpcworker registers, through oslo.log's public
    oslo.config.opts entry point."""
    (ep,) = [
        e for e in importlib.metadata.entry_points(group="oslo.config.opts") if e.name == "oslo.log"
    ]
    registered = set(conffile.new_conf())
    return [(group, [o for o in options if o.dest in registered]) for group, options in ep.load()()]


def _all_opts() -> Iterator[tuple[str, cfg.Opt]]:
    for group, options in [*opts.list_opts(), *_oslo_log_opts()]:
        name = group.name if isinstance(group, cfg.OptGroup) else (group or "DEFAULT")
        if name == opts.binding_group("NAME"):
            name = f"binding:{BINDING}"
        for opt in options:
            yield name, opt


def _bad_values(opt: cfg.Opt) -> Iterable[tuple[str, str]]:
    """(case id, value) pairs the option's type must refuse."""
    t = opt.type
    if isinstance(t, types.Boolean):
        yield "not-a-bool", "maybe"
    elif isinstance(t, types.Integer | types.Float):
        yield "not-a-number", "twelve"
        if getattr(t, "min", None) is not None:
            yield "below-min", str(t.min - 1)
        if getattr(t, "max", None) is not None:
            yield "above-max", str(t.max + 1)
    elif isinstance(t, types.String) and t.choices:
        yield "not-a-choice", "no-such-choice"
    elif isinstance(t, types.Dict):
        yield "not-a-dict", "key-without-value"
    elif isinstance(t, types.HostAddress):
        yield "not-a-host", "not a host!"
    # free-form strings and lists of strings have no wrong type


def _cases() -> list[Any]:
    cases = []
    for group, opt in _all_opts():
        for case, value in _bad_values(opt):
            cases.append(pytest.param(group, opt.dest, value, id=f"{group}.{opt.dest}-{case}"))
    return cases


CASES = _cases()


def test_cases_cover_the_typed_options() -> None:
    """The generator found cases in every group (a renamed group would skip silently)."""
    groups = {p.values[0] for p in CASES}
    assert {"DEFAULT", "broker", f"binding:{BINDING}"} <= groups
    assert len(CASES) > 40


def _write(path: Path, sections: dict[str, dict[str, str]]) -> None:
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
            for name, values in sections.items()
        )
    )


@pytest.mark.parametrize("group,option,value", CASES)
def test_bad_value_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], group: str, option: str, value: str
) -> None:
    sections = {name: dict(values) for name, values in BASE.items()}
    sections.setdefault(group, {})[option] = value
    path = tmp_path / "fuzz.conf"
    _write(path, sections)
    status = daemon.main(["--config-file", str(path), "--check-config"])
    out, err = capsys.readouterr()
    assert status == 2, f"{group}.{option} = {value!r} was accepted:\n{out}{err}"
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {err!r}"
    assert f"[{group}]" in lines[0] and option in lines[0], lines[0]


def test_the_base_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each case fails because of its one changed line, not because the base is broken."""
    path = tmp_path / "base.conf"
    _write(path, BASE)
    assert daemon.main(["--config-file", str(path), "--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out
