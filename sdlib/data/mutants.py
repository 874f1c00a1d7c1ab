"""Simple, deterministic mutants of a correct program: the negative controls that show a
harness rejects wrong code (tests, agreement and speed benchmarks use them)."""

from __future__ import annotations

import ast

_FLIP = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


class _First(ast.NodeTransformer):
    """Apply one change at the first place it fits, inside the entry point."""

    def __init__(self, kind: str):
        self.kind = kind
        self.done = False

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if self.kind == "flip_compare" and not self.done and type(node.ops[0]) in _FLIP:
            node.ops[0] = _FLIP[type(node.ops[0])]()
            self.done = True
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if self.kind == "swap_binop" and not self.done and type(node.op) in _SWAP:
            node.op = _SWAP[type(node.op)]()
            self.done = True
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if self.kind == "off_by_one" and not self.done and type(node.value) is int:
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node


MUTATIONS = ("return_none", "flip_compare", "swap_binop", "off_by_one")


def mutate(program: str, entry_point: str, kind: str) -> str | None:
    """The mutant of ``program`` of the given kind, or None when it does not apply."""
    if kind == "return_none":
        return program.rstrip() + f"\n\n\ndef {entry_point}(*args, **kwargs):\n    return None\n"
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    targets = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == entry_point
    ]
    if not targets:
        return None
    changer = _First(kind)
    for stmt in targets[-1].body:
        changer.visit(stmt)
        if changer.done:
            break
    if not changer.done:
        return None
    return ast.unparse(tree)


def mutants(program: str, entry_point: str) -> dict[str, str]:
    out = {}
    for kind in MUTATIONS:
        mutant = mutate(program, entry_point, kind)
        if mutant is not None:
            out[kind] = mutant
    return out
