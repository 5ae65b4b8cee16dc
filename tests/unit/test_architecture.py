"""The house's rules that no reviewer should have to remember: checked on every run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MAILER = Path(__file__).resolve().parents[2] / "mailer"
SOURCES = sorted(p for p in MAILER.rglob("*.py") if "migrations" not in p.parts)
# "pending" is a subscriber's and an enrolment's state as well: only these name a delivery's alone.
DELIVERY_ONLY_STATES = {"sending", "sent", "failed", "skipped"}
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _names_a_ledger_state(node: ast.expr) -> bool:
    """`State.SENT`, `ledger.State.SENT`, or a string only a delivery's state can be."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
        owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
        return owner == "State"
    return isinstance(node, ast.Constant) and node.value in DELIVERY_ONLY_STATES


def _assigned(node: ast.Assign) -> list[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs of an assignment, tuple targets paired with tuple values."""
    pairs = []
    for target in node.targets:
        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
            pairs += list(zip(target.elts, node.value.elts, strict=False))
        else:
            pairs.append((target, node.value))
    return pairs


def _writes_to_deliveries(call: ast.Call) -> bool:
    """`update(Delivery)…`, `insert(Delivery)…` or the deliveries table, anywhere in the chain."""
    node: ast.expr = call
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call):
            if any(isinstance(arg, ast.Name) and arg.id in {"Delivery", "_DELIVERIES"} for arg in node.args):
                return True
            node = node.func
        else:
            node = node.value
    return False


def delivery_state_writes(source: str) -> list[int]:
    """The lines of `source` that set a delivery's state, which only the ledger may do."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            lines += [
                node.lineno
                for target, value in _assigned(node)
                if isinstance(target, ast.Attribute)
                and target.attr == "state"
                and _names_a_ledger_state(value)
            ]
        elif isinstance(node, ast.Dict):
            lines += [
                node.lineno
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value == "state" and _names_a_ledger_state(value)
            ]
        elif isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id == "Delivery")
            or (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "values"
                and _writes_to_deliveries(node)
            )
        ):
            lines += [node.lineno for keyword in node.keywords if keyword.arg == "state"]
    return lines


@pytest.mark.parametrize(
    "snippet",
    [
        'row.state = "sent"',
        "row.state = State.SKIPPED",
        'delivery.state, delivery.claimed_by = "skipped", None',
        "session.execute(update(Delivery).where(Delivery.id == 1).values(state='pending'))",
        "session.execute(update(_DELIVERIES).values(state=x))",
        "session.add(Delivery(state='pending', kind='step'))",
        'rows = [{"kind": "step", "state": ledger.State.PENDING}]',
    ],
)
def test_the_check_finds_a_state_written_outside_the_ledger(snippet: str) -> None:
    """Each way of setting a delivery's state is caught, so the rule below can fail."""
    assert delivery_state_writes(snippet) == [1]


def test_only_the_ledger_moves_a_delivery_between_states() -> None:
    """No module but ledger.py assigns a delivery's state."""
    found = [
        f"{path.relative_to(MAILER.parent)}:{line}"
        for path in SOURCES
        if path.name != "ledger.py"
        for line in delivery_state_writes(path.read_text(encoding="utf-8"))
    ]
    assert found == []
    assert delivery_state_writes((MAILER / "ledger.py").read_text(encoding="utf-8")), (
        "the ledger writes none?"
    )


def test_functions_and_classes_stay_small() -> None:
    """No function in mailer/ is longer than 80 lines, no class longer than 250 (migrations aside)."""
    too_long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    too_long.append(
                        f"{path.relative_to(MAILER.parent)}:{node.lineno} {node.name}: {length} lines"
                    )
    assert too_long == []
