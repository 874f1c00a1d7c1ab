"""The trusted half of judging: what a problem's tests ask of a program, and what its answers
mean. Runs in the caller's process; never calls program code.

A job (``sandbox_worker``) only executes the program and calls its functions on inputs that
were computed here, returning each result as plain data (exact builtin types, or an error).
Expected values, oracles, comparisons and the counting of tests never enter the job, so a
program cannot read them, patch them or report a pass: it can only return values.

* ``call`` tests (EvalPlus): the call is the test's inputs; the result is compared here.
* ``assert`` tests (MBPP, HumanEval): the test code runs *here*, in a namespace of its own
  (pristine builtins, a private ``random``, the benchmark's own helpers such as
  ``encode_cyclic`` or ``poly``), with the program's functions replaced by proxies. A first
  pass at planning time records the calls a test makes; the job computes them; a second pass
  replays the test with the job's results and decides. A call the first pass could not
  foresee (its inputs depend on an earlier result) is asked of the job in a further round.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import json
import math
import operator
import os
import random
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from sdlib.execution import valuecodec
from sdlib.execution.problems import CallTests, Problem

REPR_LIMIT = 400
_BINOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BUILTIN_EXCEPTIONS = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception)
}


class ProgramError(Exception):
    """The program raised, inside the job, an exception of a class that is not builtin."""


class _StopRecording(Exception):
    pass


class _Dummy:
    """What a proxy answers before the job has answered: absorbs whatever the test does
    with it, so that one pass sees every call a test will make (a loop of 100 asserts
    included); tests judged with a dummy in play are never decided."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __getitem__(self, key):
        return self

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return False

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __eq__

    def __int__(self):
        return 0

    __index__ = __int__

    def __float__(self):
        return 0.0

    def __str__(self):
        return ""

    def __repr__(self):
        return "<no answer yet>"


def _absorb(self, *args):
    return self


for _name in (
    "add sub mul truediv floordiv mod pow neg pos abs invert and or xor lshift rshift matmul "
    "radd rsub rmul rtruediv rfloordiv rmod rpow rand ror rxor rlshift rrshift round"
).split():
    setattr(_Dummy, f"__{_name}__", _absorb)
DUMMY = _Dummy()


def _contains_dummy(value, depth: int = 0) -> bool:
    if value is DUMMY:
        return True
    if depth > 20:
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_contains_dummy(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_contains_dummy(v, depth + 1) for v in (*value.keys(), *value.values()))
    return False


@dataclass(frozen=True)
class Ref:
    """An input that exists only in the job: a name the problem's setup code defines there
    (MBPP 367/927 build trees of the program's own ``Node`` class)."""

    name: str


class Handle:
    """An object of the program's own class that a call returned (MBPP's ``Pair(5, 24)``):
    never compared as data here, but passed on to later calls as the call that made it."""

    def __init__(self, key: str, what: str):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "what", what)

    def __repr__(self) -> str:
        return f"<{self.what}>"

    def _refuse(self, *args, **kwargs):
        raise NotPlainAnswer(self.what)

    def __getattr__(self, name):
        raise NotPlainAnswer(self.what)


class NotPlainAnswer(Exception):
    """A test used, as data, an answer that is not plain data."""


for _op in (
    "eq ne lt le gt ge bool iter len hash contains getitem call int float index str "
    "add sub mul truediv floordiv mod pow neg pos abs invert and or xor lshift rshift matmul "
    "radd rsub rmul rtruediv rfloordiv rmod rpow rand ror rxor rlshift rrshift round"
).split():
    setattr(Handle, f"__{_op}__", Handle._refuse)


_BUILTIN_VALUES = {name: value for name, value in vars(builtins).items() if isinstance(value, type)}


def _encode_input(value: Any, depth: int = 0) -> Any:
    """Plain data, plus three tags the job resolves: a name its setup defines, a builtin
    class passed as an argument (``remove_datatype(t, int)``), and a program object."""
    if isinstance(value, Ref):
        return {"$ref": value.name}
    if isinstance(value, Handle):
        return {"$call": json.loads(value.key)}
    if isinstance(value, type) and _BUILTIN_VALUES.get(value.__name__) is value:
        return {"$builtin": value.__name__}
    if (
        depth < 50
        and type(value) in (list, tuple)
        and any(isinstance(v, (Ref, Handle, type)) for v in value)
    ):
        items = [_encode_input(v, depth + 1) for v in value]
        return items if type(value) is list else {"$t": items}
    return valuecodec.encode(value)


def call_key(name: str, args: tuple, kwargs: dict) -> str:
    """The wire form of one call, also its identity: inputs as plain data."""
    enc_args = [_encode_input(a) for a in args]
    enc_kwargs = {k: _encode_input(v) for k, v in kwargs.items()}
    return json.dumps([name, enc_args, enc_kwargs])


def short(value: Any) -> str:
    """A capped repr of a plain value (never raises: a 10,000-digit int has no decimal repr
    under Python's default limit)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError, MemoryError):
        text = f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


# ----------------------------------------------------------------------------- oracles ----

_ORACLES: dict = {}


def _oracles() -> dict:
    """EvalPlus's special oracles, read from its file (no import of the package)."""
    if not _ORACLES:
        spec = importlib.util.find_spec("evalplus")
        if spec is not None and spec.submodule_search_locations:
            path = os.path.join(spec.submodule_search_locations[0], "eval", "_special_oracle.py")
            namespace: dict = {}
            with open(path) as f:
                exec(compile(f.read(), path, "exec"), namespace)
            _ORACLES.update(namespace)
    return _ORACLES


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def allclose(out, exp, atol: float, rtol: float = 1e-07) -> bool:
    """numpy.allclose for the scalars and flat sequences EvalPlus compares with it (and the
    number tokens of stdio outputs, which it parses the same way)."""
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    exps = list(exp) if isinstance(exp, (list, tuple)) else [exp]
    if len(outs) != len(exps):
        return False
    for a, b in zip(outs, exps):
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            if not allclose(a, b, atol, rtol):
                return False
            continue
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError, OverflowError):
            return False
        if math.isinf(a) or math.isinf(b):
            if a != b:
                return False
        elif not abs(a - b) <= atol + rtol * abs(b):
            return False
    return True


def _listed(value):
    if isinstance(value, (list, tuple)):
        return [_listed(v) for v in value]
    return value


def call_matches(out, exp, inputs, oracle: str, atol_state: list) -> bool:
    """EvalPlus's comparison (evalplus.eval.unsafe_execute), oracles included, on plain
    values decoded from the job (they cannot run code)."""
    if oracle == "poly_root":
        return abs(_oracles()["_poly"](*inputs, out)) <= atol_state[0]
    exact = out == exp
    if oracle == "any":
        exact = True
    elif oracle == "sum_div":
        exact = exact or out == 0
    elif oracle == "surface_area":
        exact = exact or abs(out - _oracles()["_surface_Area"](*inputs)) <= atol_state[0]
    elif oracle == "digit_distance":
        exact = exact or out == _oracles()["_digit_distance_nums"](*inputs)
    elif oracle == "set_eq":
        exact = set(out) == set(exp)
    elif oracle == "apps":  # APPS's testing_util: tuples are lists; [x] also accepts x
        out, exp = _listed(out), _listed(exp)
        exact = out == exp or (type(exp) is list and len(exp) == 1 and out == exp[0])
    elif oracle == "not_none":
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    # EvalPlus keeps a float tolerance, once set, for the task's later inputs: so do we.
    if atol_state[0] == 0 and _is_floats(exp):
        atol_state[0] = 1e-6
    if not exact and atol_state[0] != 0:
        if type(out) is not type(exp):
            return False
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return allclose(out, exp, atol_state[0])
    return bool(exact)


# ------------------------------------------------------------------------ assert tests ----


def _compile_expr(node: ast.expr) -> tuple:
    """('cmp', left, [(op, right)...]) | ('not', x) | ('and'|'or', [xs]) | ('val', code):
    the final assertion in pieces, so that a failed ``==`` can report both sides."""
    if isinstance(node, ast.Compare) and all(type(op) in _BINOPS for op in node.ops):
        left = compile(ast.Expression(node.left), "<test>", "eval")
        rights = [
            (_BINOPS[type(op)], compile(ast.Expression(c), "<test>", "eval"))
            for op, c in zip(node.ops, node.comparators)
        ]
        return ("cmp", left, rights)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ("not", _compile_expr(node.operand))
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return (kind, [_compile_expr(v) for v in node.values])
    return ("val", compile(ast.Expression(node), "<test>", "eval"))


def _eval_piece(piece: tuple, ns: dict, report: dict):
    kind = piece[0]
    if kind == "val":
        return eval(piece[1], ns)
    if kind == "not":
        return not _eval_piece(piece[1], ns, report)
    if kind in ("and", "or"):
        result = None
        for sub in piece[1]:
            result = _eval_piece(sub, ns, report)
            if (kind == "and") != bool(result):
                return result
        return result
    left = eval(piece[1], ns)
    for op, right_code in piece[2]:
        right = eval(right_code, ns)
        if not op(left, right):
            if op is operator.eq:
                report["_expected"], report["_actual"] = right, left
            return False
        left = right
    return True


@dataclass
class AssertTest:
    code: str
    prefix: Any = None  # compiled statements before the final assert
    final: tuple | None = None  # the final assert, in pieces
    message: Any = None  # its message expression
    broken: bool = False  # the test itself does not compile
    recording: Any = None  # the whole test with its asserts as plain expressions
    calls: list[str] = field(default_factory=list)  # keys recorded by the first pass


@dataclass
class CallTest:
    key: str
    inputs: str  # JSON text of the wire form, parsed and decoded on first use
    expected: str  # JSON text of the wire form, parsed and decoded on first use
    oracle: str = ""
    _wire: Any = None
    _decoded: tuple | None = None
    _digest: str | None = None
    _comparable: bool | None = None
    _floats: bool | None = None

    def wire_expected(self) -> Any:
        if self._wire is None:
            self._wire = json.loads(self.expected)
        return self._wire

    def wire_comparable(self) -> bool:
        """Whether equal wire forms mean equal values: always, but for a NaN (``$f``), which
        equals nothing (its tag is text, so the test is a substring search)."""
        if self._comparable is None:
            self._comparable = '"$f"' not in self.expected
        return self._comparable

    def expects_floats(self) -> bool:
        """EvalPlus's ``is_floats`` of the expected value (it turns on a tolerance)."""
        if self._floats is None:
            self._floats = valuecodec.wire_is_floats(self.wire_expected())
        return self._floats

    def digest(self) -> str:
        """SHA-256 of the expected value's wire form, as the job hashes its answers."""
        if self._digest is None:
            self._digest = valuecodec.digest(self.wire_expected())
        return self._digest

    def values(self) -> tuple:
        if self._decoded is None:
            inputs = valuecodec.decode(json.loads(self.inputs))
            self._decoded = (inputs, valuecodec.decode(self.wire_expected()))
        return self._decoded


def _compile_assert(code: str) -> AssertTest:
    test = AssertTest(code)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        test.broken = True
        return test
    body = tree.body
    last = body[-1] if body else None
    prefix = body[:-1] if isinstance(last, ast.Assert) else body
    test.prefix = compile(ast.Module(body=prefix, type_ignores=[]), "<test>", "exec")
    test.recording = compile(_NoAsserts().visit(ast.parse(code)), "<test>", "exec")
    if isinstance(last, ast.Assert):
        test.final = _compile_expr(last.test)
        if last.msg is not None:
            test.message = compile(ast.Expression(last.msg), "<test>", "eval")
    return test


class _NoAsserts(ast.NodeTransformer):
    """The first pass evaluates every assertion's expression but never stops on one."""

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        return ast.copy_location(ast.Expr(value=self.visit(node.test)), node)


def _private_random():
    """A ``random`` module of the tests' own: seeded per test, shared with nobody. Made as
    the real one is (module-level functions are the bound methods of one ``Random``), not
    by executing it again: plans are made for every problem of a benchmark."""
    module = types.ModuleType("random", random.__doc__)
    instance = random.Random()
    for name, value in vars(random).items():
        if getattr(value, "__self__", None) is random._inst:
            value = getattr(instance, value.__name__)
        elif name == "_inst":
            value = instance
        module.__dict__.setdefault(name, value)
    return module


_STDLIB = frozenset(getattr(__import__("sys"), "stdlib_module_names", ())) - {"random"}


def _names(code: str) -> tuple[set[str], set[str], set[str]]:
    """The names a test calls, loads and assigns (functions and classes it defines too)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(), set(), set()
    called, loaded, assigned = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else assigned).add(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assigned.add(node.name)
    return called, loaded, assigned


class _Proxy:
    """Stands for one of the program's functions inside the trusted test code."""

    def __init__(self, name: str, plan: Plan, results: dict | None, seen: list, missing: set):
        self.name, self.plan, self.results, self.seen = name, plan, results, seen
        self.missing = missing

    def __call__(self, *args, **kwargs):
        try:
            key = call_key(self.plan.job_name(self.name), args, kwargs)
        except (valuecodec.UnsupportedValue, TypeError, ValueError, RecursionError):
            if self.results is None or _contains_dummy(args) or _contains_dummy(kwargs):
                return DUMMY  # inputs that depend on an answer not given yet
            raise _StopRecording() from None
        self.seen.append(key)
        if self.results is None:  # first pass: record, answer nothing
            return DUMMY
        if key not in self.results:
            self.missing.add(key)  # asked of the job in the next round
            return DUMMY
        result = self.results[key]
        if "h" in result:  # only a digest so far: the value itself is asked next round
            self.missing.add(key)
            return DUMMY
        if "v" in result:
            return valuecodec.decode(result["v"])
        if result.get("etype") == "NotPlain":
            return Handle(key, result.get("msg") or "an object of the program")
        raise _program_exception(result)


def _program_exception(result: dict) -> BaseException:
    etype = result.get("etype") or "Exception"
    message = result.get("msg") or etype
    klass = _BUILTIN_EXCEPTIONS.get(etype)
    if klass is not None and etype not in ("AssertionError",):
        try:
            exc = klass(message)
        except Exception:  # noqa: BLE001
            exc = ProgramError(message)
    else:
        exc = ProgramError(message)
    exc.sdlib_result = result  # type: ignore[attr-defined]
    return exc


# ---------------------------------------------------------------------------------- plan ----


@dataclass
class Plan:
    """Everything the trusted side knows about one problem's tests."""

    problem: Problem
    tests: list  # AssertTest | CallTest, in order
    calls: list[str]  # the keys of the first round, in order (the job's wire form)
    # For each call, the test it belongs to: once a call raises, the job skips the rest of
    # that test's calls (the test stops at its first exception, as it would in-process).
    groups: list[int] = field(default_factory=list)
    job_setup: str = ""  # setup code that must run in the job (it needs the program)
    base: dict = field(default_factory=dict)  # the tests' namespace before each test
    proxies: set[str] = field(default_factory=set)  # names the tests call that the program defines
    random: Any = None
    call_only: bool = False  # every test a call test: its calls are independent
    wire_key: str = ""  # the problem's name in a worker (a new plan gets a new one)
    _line: bytes | None = None

    def job_name(self, name: str) -> str:
        return self.problem.entry_point if name == "candidate" else name

    def namespace(
        self, results: dict | None, seen: list, seed: int, missing: set | None = None
    ) -> dict:
        ns = dict(self.base)
        missing = set() if missing is None else missing
        for name in self.proxies:
            ns[name] = _Proxy(name, self, results, seen, missing)
        if self.random is not None:
            self.random.seed(seed)
        return ns

    def message(self) -> dict:
        """The problem as a worker receives it: no expected value, no test code."""
        return json.loads(self.message_line())

    def message_line(self) -> bytes:
        """``message()`` as the line sent to every worker, made once: the calls are already
        JSON, so they are joined, not parsed and written again (EvalPlus inputs are MBs)."""
        if self._line is None:
            head = json.dumps(
                {
                    "op": "problem",
                    "key": self.wire_key or self.problem.key,
                    "entry_point": self.problem.entry_point,
                    "setup": self.job_setup,
                    "groups": self.groups,
                }
            )
            self._line = (head[:-1] + ', "calls": [' + ", ".join(self.calls) + "]}\n").encode()
        return self._line


def make_plan(problem: Problem) -> Plan:
    tests: list = []
    calls: list[str] = []
    seen_keys: set[str] = set()

    groups: list[int] = []  # for each call, the test that asked for it first

    def add(key: str) -> None:
        if key not in seen_keys:
            seen_keys.add(key)
            calls.append(key)
            groups.append(len(tests) - 1)

    specs = _test_specs(problem)
    plan = Plan(problem=problem, tests=tests, calls=calls, groups=groups)
    plan.call_only = all(spec[0] == "call" for spec in specs)
    if plan.call_only and problem.setup.strip():
        plan.job_setup = problem.setup  # e.g. APPS's wrapper around a ``Solution`` method
    if any(spec[0] == "assert" for spec in specs):
        _prepare_namespace(plan, [spec[1] for spec in specs if spec[0] == "assert"])
    for index, spec in enumerate(specs):
        if spec[0] == "call":
            _, inputs, expected, oracle, known = spec
            # EvalPlus's not-None tasks return objects (a re.Match): the job may answer
            # "not None" for those rather than refusing them.
            extra = ', "not_none"' if oracle == "not_none" else ""
            key = f"[{json.dumps(problem.entry_point)}, {inputs}, {{}}{extra}]"
            test = CallTest(key, inputs, expected, oracle)
            if known:  # digest and float-ness, computed when cached
                test._digest, test._floats = known
            tests.append(test)
            add(key)
            continue
        test = _compile_assert(spec[1])
        tests.append(test)
        if test.broken:
            continue
        seen: list[str] = []
        ns = plan.namespace(None, seen, seed=index)
        try:
            exec(test.recording, ns)
        except BaseException:  # noqa: BLE001 - a first pass answers nothing to any call
            pass
        test.calls = seen
        for key in seen:
            add(key)
    return plan


def _test_specs(problem: Problem) -> list[tuple]:
    """Each test as the plan reads it: ("call", inputs JSON, expected JSON, oracle, known
    digest and float-ness or None) or ("assert", code). Loaders that keep the JSON text (``CallTests``) are not re-encoded."""
    tests = problem.tests
    if isinstance(tests, CallTests):
        return [
            ("call", i, e, tests.oracle, tests.large.get(n))
            for n, (i, e) in enumerate(zip(tests.inputs, tests.expected))
        ]
    specs: list[tuple] = []
    for test in tests:
        if test.kind == "call":
            inputs = json.dumps(valuecodec.encode(list(test.inputs)))
            expected = json.dumps(valuecodec.encode(test.expected))
            specs.append(("call", inputs, expected, test.oracle, None))
        else:
            specs.append(("assert", test.code))
    return specs


def _prepare_namespace(plan: Plan, codes: list[str]) -> None:
    """The tests' own namespace: pristine builtins, a private ``random``, the benchmark's
    prompt (its helper functions) and setup; proxies for the program's functions."""
    problem = plan.problem
    private_random = _private_random()
    pristine = dict(vars(builtins))
    real_import = builtins.__import__

    def tests_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "random":
            return private_random
        return real_import(name, globals, locals, fromlist, level)

    pristine["__import__"] = tests_import
    base: dict = {"__builtins__": pristine, "__name__": "__sdlib_tests__"}
    if problem.prompt.strip():
        try:
            exec(compile(problem.prompt, "<prompt>", "exec"), base)
        except BaseException:  # noqa: BLE001 - a prompt that is not runnable code
            pass
    setup_names: set[str] = set()
    if problem.setup.strip():
        try:
            exec(compile(problem.setup, "<setup>", "exec"), base)
        except BaseException:  # noqa: BLE001 - setup that needs the program (MBPP 367, 927)
            plan.job_setup = problem.setup
            setup_names = _names(problem.setup)[2]
            for name in setup_names:
                base[name] = Ref(name)
    called: set[str] = set()
    for code in codes:
        called_here, loaded, assigned = _names(code)
        called |= called_here - assigned
        for name in loaded - assigned:
            if name not in base and name not in pristine and name in _STDLIB:
                base[name] = importlib.import_module(name)  # ``sys.getsizeof`` in MBPP 596
    proxies = {problem.entry_point, "candidate"}
    for name in called:
        if name in setup_names:
            continue
        if name not in base and name not in pristine:
            proxies.add(name)  # another function the program must define
    base["random"] = private_random
    plan.base, plan.proxies, plan.random = base, proxies, private_random


# --------------------------------------------------------------------------------- judge ----


def _error_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _event_of_exception(exc: BaseException) -> dict:
    result = getattr(exc, "sdlib_result", None)
    if result is not None:  # raised by the program, in the job
        event = {"ok": False, "etype": result.get("etype") or "Exception"}
        event["msg"] = result.get("msg") or event["etype"]
        if result.get("where"):
            event["where"] = result["where"]
        return event
    return {"ok": False, "etype": type(exc).__name__, "msg": _error_line(exc)}


def judge_tests(plan: Plan, results: dict, mode: str) -> tuple[list[dict | None], set[str]]:
    """One event per test (None: its calls have no result, the job ended first) and the
    calls still missing."""
    events: list[dict | None] = []
    missing: set[str] = set()
    atol_state = [plan.problem.atol or 0.0]
    for index, test in enumerate(plan.tests):
        if isinstance(test, CallTest):
            result = results.get(test.key)
            if result is None:
                events.append(None)
                continue
            if "h" in result:  # a large answer, sent as its digest
                if not test.oracle and test.wire_comparable() and result["h"] == test.digest():
                    events.append({"ok": True})  # the very same data as expected
                    if atol_state[0] == 0 and test.expects_floats():
                        atol_state[0] = 1e-6  # as call_matches would have set it
                else:
                    missing.add(test.key)  # differs (or needs its oracle): fetch it
                    events.append(None)
                continue
            if "v" not in result:
                events.append(_event_of_exception(_program_exception(result)))
                continue
            if mode == "outputs":
                events.append({"ok": True})
                continue
            if not test.oracle and test.wire_comparable() and result["v"] == test.wire_expected():
                events.append({"ok": True})  # equal wire forms: equal values, not decoded
                if atol_state[0] == 0 and test.expects_floats():
                    atol_state[0] = 1e-6  # as call_matches would have set it
                continue
            inputs, expected = test.values()
            out = valuecodec.decode(result["v"])
            try:
                ok = call_matches(out, expected, inputs, test.oracle, atol_state)
            except Exception:  # noqa: BLE001 - e.g. set() of a returned unhashable list
                ok = False
            event = {"ok": bool(ok)}
            if not ok:  # shown only for the first failure: made into text there
                event.update(_expected=expected, _actual=out)
            events.append(event)
            continue
        if test.broken:
            events.append({"ok": False, "etype": "SyntaxError", "msg": "the test does not compile"})
            continue
        seen: list[str] = []
        needed: set[str] = set()
        ns = plan.namespace(results, seen, seed=index, missing=needed)
        report: dict = {}
        try:
            exec(test.prefix, ns)
            ok = True if test.final is None else bool(_eval_piece(test.final, ns, report))
            event = {"ok": ok}
            if not ok:
                event.update(report)
                if test.message is not None:
                    event["msg"] = short(eval(test.message, ns))
        except _StopRecording:
            event = {"ok": False, "etype": "TypeError", "msg": "a test input is not a plain value"}
        except NotPlainAnswer as exc:
            event = {"ok": False, "etype": "NotPlain", "msg": exc.args[0]}
        except AssertionError:
            event = {"ok": False}
        except BaseException as exc:  # noqa: BLE001
            event = _event_of_exception(exc)
        if needed:  # decided with answers not given yet: ask, and judge it next round
            missing |= needed
            events.append(None)
            continue
        events.append(event)
    return events, missing


def describe(test, entry_point: str) -> str:
    if isinstance(test, AssertTest):
        text = test.code.strip()
    else:
        args = ", ".join(short(a) for a in test.values()[0])
        text = f"{entry_point}({args})"
    return text if len(text) <= 2 * REPR_LIMIT else text[: 2 * REPR_LIMIT - 3] + "..."


def _failure_status(event: dict) -> str:
    etype = event.get("etype", "")
    if not etype or etype == "NotPlain":
        return "fail"
    if etype == "MemoryError":
        return "memory"
    return "error"


def _failure_feedback(verdict: dict, event: dict) -> str:
    lines = [f"Failed test: {verdict.get('failed_test', '')}"]
    if event.get("etype") and event["etype"] != "NotPlain":
        lines.append(
            event.get("msg", event["etype"])
            + (f" ({event['where']})" if event.get("where") else "")
        )
    elif event.get("etype") == "NotPlain":
        lines.append(event.get("msg", ""))
    else:
        if event.get("expected") or event.get("actual"):
            lines.append(f"Expected: {event.get('expected', '')}")
            lines.append(f"Actual: {event.get('actual', '')}")
        if event.get("msg"):
            lines.append(f"Message: {event['msg']}")
    return "\n".join(lines)


def verdict_of(plan: Plan, events: list[dict | None], end: dict) -> dict:
    """The verdict from the trusted events and how the job ended (``end`` from the worker)."""
    total = len(plan.tests)
    judged = [e for e in events if e is not None]
    passed = sum(1 for e in judged if e.get("ok") is True)
    verdict: dict = {
        "status": "pass",
        "passed": passed,
        "total": total,
        "duration": end.get("duration", 0.0),
    }
    if end.get("ignored"):
        verdict["extra"] = {"ignored_events": end["ignored"]}
    kind = end.get("end")
    if kind == "syntax":
        return dict(verdict, status="syntax", error_type="SyntaxError", feedback=end.get("msg", ""))
    if kind == "setup_failed":
        return dict(verdict, status="sandbox_error", feedback=end.get("msg", ""))
    if kind == "fatal":
        etype = end.get("etype", "")
        status = "memory" if etype == "MemoryError" else "error"
        return dict(verdict, status=status, error_type=etype, feedback=end.get("msg", ""))
    first_index = next(
        (i for i, e in enumerate(events) if e is not None and e.get("ok") is not True), None
    )
    first = events[first_index] if first_index is not None else None
    if first is not None and "_expected" in first:
        first = dict(first, expected=short(first["_expected"]), actual=short(first["_actual"]))
    if first is not None:
        verdict["failed_test"] = describe(plan.tests[first_index], plan.problem.entry_point)
        verdict["expected"] = first.get("expected", "")
        verdict["actual"] = first.get("actual", "")
        verdict["error_type"] = first.get("etype", "")
    if kind == "done" and len(judged) == total and first is None:
        return verdict
    if kind == "done":
        if first is None:  # "done" before every call reported: a program that forged it
            return dict(
                verdict,
                status="crash",
                error_type="MissingReport",
                feedback="the program ended its job before every test was run",
            )
        return dict(
            verdict, status=_failure_status(first), feedback=_failure_feedback(verdict, first)
        )
    if kind == "timeout":
        return dict(verdict, status="timeout", error_type="Timeout", feedback="Timeout")
    if kind == "flood":
        return dict(
            verdict,
            status="crash",
            error_type="OutputFlood",
            feedback="the program flooded the harness channel",
        )
    if kind == "signal":
        name = end.get("signal", "")
        if name == "SIGXCPU":
            return dict(verdict, status="timeout", error_type="Timeout", feedback="Timeout")
        return dict(
            verdict,
            status="crash",
            error_type=name,
            feedback=f"the program was killed by signal {name}",
        )
    return dict(
        verdict,
        status="crash",
        error_type="EarlyExit",
        feedback=f"the program exited (status {end.get('code')}) before the tests finished",
    )
