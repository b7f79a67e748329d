"""The field-guide walk's page reader and output comparison: console blocks become steps in the right terminals (here-documents, continuations, Ctrl-C, what may keep running), a page that breaks its conventions is refused, a terminal's screen is what a person sees, and the comparison masks only what varies between runs: a changed word, state or amount is still a difference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.console_walk import (
    PageError,
    StepKind,
    Substitutions,
    console_blocks,
    line_matches,
    match_prefix,
    normalise,
    partial_line,
    prompts,
    screen_lines,
)

PAGE = """\
Some prose.

```console
$ cd ~/x
$ meter-provision init --dir gw \\
      --gateway-id gw-bench
identity: /home/field/x
```

```toml
ignored = true
```

```console t2
$ meter-sim serve --meters 3
ready: map pe1
```

```console
$ cat > a.csv <<'EOF'
$ not a command: inside the here-document
EOF
$ meter-provision commission PE1-000001
switch it? [y/N] y
type this test token on the meter's keypad: 1234 5678 9012 3456 7890
```

```console t4 retry
$ meter-provision status
ok
```

```console
PASS  keypad
```

```console t2
^C
```
"""


def test_a_page_becomes_steps_in_their_terminals() -> None:
    blocks, others = console_blocks(PAGE)
    assert others == ["toml"]
    steps = [s for b in blocks for s in b.steps]
    assert [(s.terminal, s.kind, s.command.split("\n")[0]) for s in steps] == [
        ("t1", StepKind.COMMAND, "cd ~/x"),
        ("t1", StepKind.COMMAND, "meter-provision init --dir gw \\"),
        ("t2", StepKind.COMMAND, "meter-sim serve --meters 3"),
        ("t1", StepKind.COMMAND, "cat > a.csv <<'EOF'"),
        ("t1", StepKind.COMMAND, "meter-provision commission PE1-000001"),
        ("t4", StepKind.COMMAND, "meter-provision status"),
        ("t1", StepKind.OUTPUT, ""),
        ("t2", StepKind.INTERRUPT, ""),
    ]
    init, serve, heredoc, commission, status = steps[1], steps[2], steps[3], steps[4], steps[5]
    assert init.command.endswith("--gateway-id gw-bench")
    assert init.shown == ["identity: /home/field/x"]
    assert heredoc.command.splitlines()[1:] == ["$ not a command: inside the here-document", "EOF"]
    assert heredoc.shown == []
    # The simulator runs on until ^C; commission until its output goes on below; the
    # others must end before the walk goes on.
    assert [s.keeps_running for s in steps] == [
        False,
        False,
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert status.retry
    assert not serve.retry
    assert prompts(commission.shown) == [("switch it? [y/N]", "y")]


@pytest.mark.parametrize(
    ("page", "problem"),
    [
        ("```console t2 again\n$ ls\n```\n", "unknown word 'again'"),
        ("```console\n$ cat <<EOF\nx\n```\n", "here-document without EOF"),
        ("```console\nhello\n```\n", "where no command runs"),
        ("```console\n$ ls\n```\n```console t2\n^C\n```\n", "where no command runs"),
        ("```console\n```\n", "is empty"),
    ],
)
def test_a_page_breaking_its_conventions_is_refused(page: str, problem: str) -> None:
    with pytest.raises(PageError, match=problem):
        console_blocks(page)


def test_the_screen_is_what_a_terminal_shows() -> None:
    raw = "\r[#   ] 1/4 units\r[####] 4/4 units \r\nscanned\r\nask? [y/N] "
    assert screen_lines(raw) == ["[####] 4/4 units ", "scanned"]
    assert partial_line(raw) == "ask? [y/N] "
    assert screen_lines("long line\rshort\n") == ["shortline"]


def test_the_masks_hide_what_varies_and_nothing_else() -> None:
    assert (
        normalise("2026-12-07 00:47:35,518 INFO gateway.runner: x")
        == "<time> INFO gateway.runner: x"
    )
    assert normalise("last sync 2026-12-07T00:47:35.800Z") == "last sync <time>"
    assert normalise("1796604443: mosquitto version 2.0.11 running") == (
        "<time>: mosquitto version <v> running"
    )
    assert normalise("token: 2305 8633 3790 7120 1597") == "token: <token>"
    assert normalise("PASS  read     755880 Wh, 203 W, 231.5 V") == "PASS read <n> Wh, <n> W, <n> V"
    assert normalise("gateway gw-bench, status written 12 s ago") == (
        "gateway gw-bench, status written <n> s ago"
    )
    assert normalise("^Cstopped  (PID 4242)  ") == "stopped (PID <pid>)"
    # not masked: states, counts, ids, money
    for kept in ("meters: 3/3 answering", "credit 50.00 USD, state normal", "keypad_seq 1"):
        assert normalise(kept) == kept


def test_money_and_durations_compare_with_a_tolerance_words_never() -> None:
    assert line_matches("PE1-000001 60.00 normal", "PE1-000001 59.62 normal")
    assert not line_matches("PE1-000001 60.00 normal", "PE1-000001 50.00 normal")  # no top-up
    assert not line_matches("PE1-000001 60.00 normal", "PE1-000001 60.00 exhausted")
    assert line_matches("scanned 10 units in 4.4 s", "scanned 10 units in 5.9 s")
    assert not line_matches("scanned 10 units in 4.4 s", "scanned 10 units in 141.2 s")
    assert not line_matches("scanned 10 units in 4.4 s", "scanned 11 units in 4.4 s")
    assert not line_matches("a b", "a b c")
    assert line_matches(
        "connection from 127.0.0.1:... on port 1884.", "connection from 127.0.0.1:5 on port 1884."
    )
    assert not line_matches("connection from 127.0.0.1:... on port 1884.", "refused on port 1884.")


def test_any_lines_and_prefixes() -> None:
    ran = ["a", "b", "c", "d"]
    assert match_prefix(["a", "...", "d"], ran, whole=True) == 4
    assert match_prefix(["a", "b"], ran, whole=True) is None  # lines left over
    assert match_prefix(["a", "b"], ran, whole=False) == 2  # a command still running
    assert match_prefix(["a", "..."], ran, whole=False) == 4
    assert match_prefix(["b"], ran, whole=False) is None
    assert match_prefix([], [], whole=True) == 0
    assert match_prefix(["a", "...", "x"], ran, whole=False) is None


def test_substitutions_go_both_ways() -> None:
    subs = Substitutions("/tmp/run/home", "/home/field", {1884: 40001, 5021: 40002})
    assert subs.for_run("mosquitto -p 1884 && x --control 127.0.0.1:5021") == (
        "mosquitto -p 40001 && x --control 127.0.0.1:40002"
    )
    assert (
        subs.for_page("/tmp/run/home/pe-bench on port 40001.")
        == "/home/field/pe-bench on port 1884."
    )


WORDS = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=12)
LINES = st.lists(st.lists(WORDS, min_size=1, max_size=6).map(" ".join), max_size=8)


@given(LINES)
def test_a_run_matches_a_page_that_shows_it(lines: list[str]) -> None:
    shown = [normalise(line) for line in lines]
    ran = [normalise(normalise(line)) for line in lines]  # masking twice changes nothing
    assert ran == shown
    expected = len(shown) if "..." not in shown else None
    covered = match_prefix(shown, ran, whole=True)
    assert covered == len(ran) or (expected is None and covered is not None)


@given(LINES.filter(bool), st.data())
def test_a_changed_word_is_a_difference(lines: list[str], data: st.DataObject) -> None:
    shown = [normalise(line) for line in lines]
    n = data.draw(st.integers(0, len(shown) - 1))
    if "..." in shown[n]:
        return
    ran = list(shown)
    ran[n] = ran[n] + " changed"
    assert match_prefix(shown, ran, whole=True) is None
