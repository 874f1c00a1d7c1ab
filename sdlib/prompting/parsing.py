"""Reading a model's answer: split it into explanation and code (``split_response``).

Robust to what models really write: fenced blocks in any language tag or none, glued or
unclosed fences, code without a fence, several candidate blocks (the one that defines the
entry point and compiles wins), pathological inputs (a compile budget bounds the work). Every
answer that yields no usable code says why (``ParsedResponse.reason``), so the verdict
``no_code`` is counted, never silently dropped.
"""

from __future__ import annotations

import ast
import re
import textwrap
import warnings
from dataclasses import dataclass

__all__ = ["ParsedResponse", "split_response", "clean_block"]


def clean_block(text: str) -> str:
    """Drop surrounding blank lines and trailing whitespace, keep the first line's indent."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").rstrip()


@dataclass(frozen=True)
class ParsedResponse:
    """A model answer split into explanation and code.

    ``code`` always compiles (or is None); ``broken_code`` keeps the best block that does not
    compile, so a caller can still run it for a SyntaxError instead of calling it "no code".
    ``span`` is the chosen block's [start, end) in the original text, fences included (the
    explanation ends at ``span[0]``; RL places the explanation reward there).
    """

    explanation: str
    code: str | None
    reason: str = ""  # why code is None: "empty", "no_code", "syntax_error"
    repair: str = ""  # what was done to make the code usable ("" when nothing)
    broken_code: str | None = None
    span: tuple[int, int] | None = None
    after: str = ""  # text after the chosen block (commentary, tests), stripped

    @property
    def ok(self) -> bool:
        return self.code is not None


_PY_LANGS = {"", "python", "py", "python3", "py3", "python2", "ipython", "ipython3", "sage"}
_OTHER_LANGS = {
    "bash", "sh", "shell", "console", "text", "txt", "plaintext", "output", "json", "yaml",
    "c", "cpp", "c++", "java", "javascript", "js", "typescript", "ts", "go", "rust", "ruby",
    "diff", "markdown", "md", "html", "sql", "pycon", "python-repl", "doctest", "csharp", "cs",
}  # fmt: skip
_KNOWN_LANGS = _PY_LANGS | _OTHER_LANGS
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_GLUED_OPEN = re.compile(
    r"^(?P<pre>.*?\S)[ \t]*(?P<fence>`{3,})(?P<lang>[A-Za-z][\w+.#-]*)?[ \t]*$"
)
_CODE_START = re.compile(
    r"^(?:async[ \t]+def[ \t]|def[ \t]|class[ \t]|import[ \t]"
    r"|from[ \t]+[\w.]+[ \t]+import[ \t]|@[A-Za-z_])"
)
# A definition line that is code even when it does not compile ("def f(x)" without a colon).
_BROKEN_DEF = re.compile(r"^(?:(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[:(])")
_STATEMENT_LIKE = re.compile(
    r"^(?:[ \t]+\S|[A-Za-z_][\w.]*(?:\[[^\]]*\])?[ \t]*(?:[-+*/%|&^]?=|\()"
    r"|(?:return|if|elif|else|for|while|try|except|finally|with|assert|raise|print|pass|yield)\b)"
)
_CODE_STATEMENTS: tuple[type, ...] = tuple(
    getattr(ast, name)
    for name in (
        "FunctionDef",
        "AsyncFunctionDef",
        "ClassDef",
        "Import",
        "ImportFrom",
        "Assign",
        "AugAssign",
        "For",
        "AsyncFor",
        "While",
        "If",
        "With",
        "AsyncWith",
        "Try",
        "TryStar",
        "Assert",
        "Raise",
        "Return",
        "Global",
        "Nonlocal",
        "Delete",
        "Match",
    )
    if hasattr(ast, name)
)
_MAX_COMPILES = 1500  # per response, in compiles of up to 10 kB: bounds pathological inputs


def _normalize_lang(info: str) -> tuple[str, str]:
    """Split a fence's info string into (language, code glued onto the fence line)."""
    info = info.strip()
    if not info:
        return "", ""
    head, _, rest = info.partition(" ")
    word = head.strip("{}.").split(":")[0].lower()
    if re.fullmatch(r"(?:python|py)[\d.]*", word):
        word = "python"
    if word in _KNOWN_LANGS:
        return word, rest.strip()
    if re.fullmatch(r"[\w+#.-]+", info):  # an unknown one-word tag
        return word, ""
    return "", info  # "```def f(x):" - the info is code


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


def _parse(src: str, budget: _Budget) -> tuple[ast.Module | None, int | None]:
    """(tree, None) when ``src`` compiles, else (None, line of the error if known)."""
    if budget.left <= 0:
        return None, None
    budget.left -= 1 + len(src) // 10_000  # compile time grows with the text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = compile(src, "<response>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
            compile(tree, "<response>", "exec", dont_inherit=True)
        return tree, None
    except SyntaxError as exc:
        return None, exc.lineno
    except Exception:  # null bytes, recursion, memory: not code we can use
        return None, None


def _variants(code: str) -> list[str]:
    """The code, then repairs that do not change its meaning much (indent, tabs, nbsp)."""
    out = [code]
    dedented = textwrap.dedent(code)
    if dedented != code:
        out.append(dedented)
    if "\t" in code:
        out += [textwrap.dedent(code.expandtabs(8)), textwrap.dedent(code.expandtabs(4))]
    if "\xa0" in code:
        out.append(textwrap.dedent(code.replace("\xa0", " ")))
    return out


def _compile_any(code: str, budget: _Budget) -> tuple[str | None, ast.Module | None, int | None]:
    """The first variant of ``code`` that compiles, with its tree; else the error line."""
    lines: list[int | None] = []
    for variant in _variants(code):
        tree, line = _parse(variant, budget)
        if tree is not None:
            return variant, tree, None
        lines.append(line)
    # Only prefixes that fail in every variant may be skipped: the latest error line is safe.
    known = [n for n in lines if n is not None]
    return None, None, (max(known) if known and len(known) == len(lines) else None)


def _looks_like_code(tree: ast.Module) -> bool:
    """Prose can compile ("Hello", "Note: x"); real code has a statement that does something."""
    for node in tree.body:
        if isinstance(node, _CODE_STATEMENTS):
            return True
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return True
        if isinstance(node, ast.Expr) and isinstance(
            node.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)
        ):
            return True
    return False


def _has_def(tree: ast.Module) -> bool:
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.walk(tree)
    )


def _defines(tree: ast.Module, name: str | None) -> bool:
    if not name:
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name) == name for a in node.names):
                return True
    return False


def _defines_text(code: str, name: str | None) -> bool:
    return bool(name) and bool(
        re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name or '')}\b", code, re.M)
    )


@dataclass
class _Candidate:
    lines: list[str]  # body lines
    start: int  # span in the original text
    end: int
    fenced: bool
    lang: str
    closed: bool
    index: int = 0
    code: str | None = None
    tree: ast.Module | None = None
    repair: str = ""
    kept: int = 0  # body lines kept after trimming

    @property
    def lang_ok(self) -> bool:
        return self.lang in _PY_LANGS

    @property
    def raw(self) -> str:
        return clean_block("\n".join(self.lines))


def _best_prefix(
    lines: list[str], entry_point: str | None, budget: _Budget
) -> tuple[str | None, ast.Module | None, int]:
    """The longest prefix of ``lines`` that compiles and is code: (code, tree, lines kept).

    Trimming from the end repairs output cut off mid-line and drops chatter after code. When
    the whole text defines the entry point, a trimmed prefix must still define it.
    """
    full = "\n".join(lines)
    code, tree, error_line = _compile_any(full, budget)
    if code is not None:
        return code, tree, len(lines)
    must_define = _defines_text(full, entry_point)
    k = len(lines) - 1
    if error_line is not None and 0 < error_line < k:
        k = error_line  # a prefix holding the failing line fails the same way
    while k > 0 and budget.left > 0:
        if not lines[k - 1].strip():
            k -= 1
            continue
        code, tree, error_line = _compile_any("\n".join(lines[:k]), budget)
        if code is not None and tree is not None:
            if _looks_like_code(tree) and (not must_define or _defines(tree, entry_point)):
                return code, tree, k
        if error_line is not None and 0 < error_line < k:
            k = error_line
        else:
            k -= 1
    return None, None, 0


def _line_may_start_code(line: str, budget: _Budget) -> bool:
    """Cheap test of a region's first line alone, so prose like "import this first" does not
    cost a compile of the whole rest of the text."""
    opened = sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
    if opened > 0 or line.rstrip().endswith("\\") or line.lstrip().startswith("@"):
        return True  # continues on the next lines: cannot be judged alone
    if _parse(line, budget)[0] is not None:
        return True
    return _parse(line + "\n    pass", budget)[0] is not None  # a block header: "def f(x):"


def _split_lines(text: str) -> list[tuple[str, int, int]]:
    """(line, start, end) with ``end`` past the line break; any of \\r\\n, \\r, \\n."""
    out = []
    pos = 0
    for m in re.finditer(r"\r\n|\r|\n", text):
        out.append((text[pos : m.start()], pos, m.end()))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], pos, len(text)))
    return out


def _fenced_blocks(
    lines: list[tuple[str, int, int]], budget: _Budget
) -> tuple[list[_Candidate], list[int]]:
    """Fenced code blocks, and the indices of lines that lie outside every block."""
    blocks: list[_Candidate] = []
    outside: list[int] = []
    i = 0

    # A base-style completion starts with code and closes a fence the prompt opened.
    first = next((j for j, (s, _, _) in enumerate(lines) if _FENCE.match(s)), None)
    if first is not None and not _FENCE.match(lines[first][0]).group("info").strip():
        pre = [s for s, _, _ in lines[:first]]
        starts = [s for s in pre if s.strip()]
        if starts and "```" not in "".join(pre) and "~~~" not in "".join(pre):
            _, tree, _ = _compile_any("\n".join(pre), budget)
            if _CODE_START.match(starts[0].lstrip()) or (
                tree is not None and _looks_like_code(tree)
            ):
                blocks.append(
                    _Candidate(
                        pre,
                        lines[0][1],
                        lines[first][2],
                        fenced=True,
                        lang="",
                        closed=True,
                    )
                )
                i = first + 1

    current: _Candidate | None = None
    fence = ""
    while i < len(lines):
        text, start, end = lines[i]
        if current is None:
            m = _FENCE.match(text)
            if m:
                fence = m.group("fence")
                info = m.group("info")
                if "`" in info and fence[0] == "`":
                    # "```python x = 1```": a one-line block; other backticks are inline code.
                    one = re.fullmatch(r"(?P<body>.*?[^`\s].*?)[ \t]*`{3,}[ \t]*", info)
                    if one:
                        lang, glued = _normalize_lang(one.group("body"))
                        blocks.append(_Candidate([glued], start, end, True, lang, closed=True))
                    else:
                        outside.append(i)
                    i += 1
                    continue
                lang, glued = _normalize_lang(info)
                current = _Candidate([], start, end, fenced=True, lang=lang, closed=False)
                if glued:
                    current.lines.append(glued)
                i += 1
                continue
            g = _GLUED_OPEN.match(text)
            if g and "```" not in g.group("pre"):
                fence = g.group("fence")
                lang, _ = _normalize_lang(g.group("lang") or "")
                at = start + g.start("fence")
                current = _Candidate([], at, end, fenced=True, lang=lang, closed=False)
                i += 1
                continue
            outside.append(i)
            i += 1
            continue
        # Inside a block: a closing fence, a glued closing fence, or a new opening fence.
        stripped = text.strip()
        m = _FENCE.match(text)
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            current.closed, current.end = True, end
            blocks.append(current)
            current = None
        elif m and m.group("fence")[0] == fence[0] and _normalize_lang(m.group("info"))[0]:
            # "```python" while a block is open: the model restarted; close and reopen.
            current.closed, current.end = True, start
            blocks.append(current)
            current = None
            continue  # reprocess this line as an opening fence
        elif fence[0] == "`" and re.search(r"[^`]`{3,}[ \t]*$", text):
            current.lines.append(re.sub(r"`{3,}[ \t]*$", "", text).rstrip())
            current.closed, current.end = True, end
            blocks.append(current)
            current = None
        else:
            current.lines.append(text)
            current.end = end
        i += 1
    if current is not None:
        blocks.append(current)
    return blocks, outside


def _unfenced_regions(
    lines: list[tuple[str, int, int]], indices: list[int], entry_point: str | None, budget: _Budget
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Code outside fences: (regions that compile, regions that start like code but do not).

    A region starts at a line beginning with def/class/import/from ... import/@ and ends where
    the longest compiling prefix ends, so chatter after the code is left out.
    """
    # Contiguous runs of outside lines (fences split them).
    runs: list[list[int]] = []
    for j in indices:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    good: list[_Candidate] = []
    broken: list[_Candidate] = []
    for run in runs:
        p = 0
        while p < len(run) and budget.left > 0:
            text = lines[run[p]][0]
            if not _CODE_START.match(text):
                p += 1
                continue
            code, tree, kept = None, None, 0
            if _line_may_start_code(text, budget):
                body = [lines[j][0] for j in run[p:]]
                code, tree, kept = _best_prefix(body, entry_point, budget)
            elif not _BROKEN_DEF.match(text):
                p += 1  # "import this module first" is prose, not a broken program
                continue
            if code is not None:
                used = run[p : p + kept]
                good.append(
                    _Candidate(
                        body[:kept],
                        lines[used[0]][1],
                        lines[used[-1]][2],
                        fenced=False,
                        lang="",
                        closed=True,
                        code=code,
                        tree=tree,
                        kept=kept,
                    )
                )
                p += kept
                continue
            q = p + 1  # a broken region: keep going while lines look like code
            while q < len(run) and (
                not lines[run[q]][0].strip() or _STATEMENT_LIKE.match(lines[run[q]][0])
            ):
                q += 1
            used = run[p:q]
            broken.append(
                _Candidate(
                    [lines[j][0] for j in used],
                    lines[used[0]][1],
                    lines[used[-1]][2],
                    fenced=False,
                    lang="",
                    closed=True,
                )
            )
            p = q
    return good, broken


def _evaluate_block(block: _Candidate, entry_point: str | None, budget: _Budget) -> None:
    code, tree, kept = _best_prefix(block.lines, entry_point, budget)
    block.code, block.tree, block.kept = code, tree, kept
    notes = []
    if not block.closed:
        notes.append("unterminated fence")
    if code is not None and kept < len(block.lines):
        dropped = sum(1 for s in block.lines[kept:] if s.strip())
        if dropped:
            notes.append(f"trimmed {dropped} trailing line(s)")
    original = "\n".join(block.lines[:kept])
    if code is not None and code != original:
        if code == textwrap.dedent(original):
            notes.append("dedented")
        elif "\t" in original and "\t" not in code:
            notes.append("expanded tabs")
        else:
            notes.append("replaced non-breaking spaces")
    block.repair = "; ".join(notes)


def _normalize_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def split_response(text: str, entry_point: str | None = None) -> ParsedResponse:
    """Split a model's answer into explanation and code; never raises.

    Candidates are fenced blocks (any tag, ``` or ~~~, closed or cut off), code before a bare
    closing fence (base-style completions), and unfenced code. The chosen one compiles and is
    preferred, in order: defines ``entry_point``, defines any function or class, is Python (or
    untagged), comes last. Cut-off code is trimmed back to its longest compiling prefix. The
    explanation is the text before the chosen code; ``reason`` says why code is None ("empty",
    "no_code", "syntax_error", or "parser_error: ..." should the parser itself fail).
    """
    try:
        return _split_response(text, entry_point)
    except Exception as exc:  # a parser bug must not stop a collection run
        return ParsedResponse(
            explanation=_normalize_text(str(text)) if text is not None else "",
            code=None,
            reason=f"parser_error: {type(exc).__name__}",
        )


def _split_response(text: str, entry_point: str | None) -> ParsedResponse:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not text.strip():
        return ParsedResponse(explanation="", code=None, reason="empty")
    budget = _Budget(_MAX_COMPILES)
    # A byte-order mark is dropped from the line it sits on; offsets still index ``text``.
    lines = [(s.replace("\ufeff", ""), a, b) for s, a, b in _split_lines(text)]

    blocks, outside = _fenced_blocks(lines, budget)
    for block in blocks:
        _evaluate_block(block, entry_point, budget)

    regions: list[_Candidate] = []
    broken_regions: list[_Candidate] = []
    if not blocks:
        whole = [s for s, _, _ in lines]
        code, tree, _ = _compile_any("\n".join(whole), budget)
        if code is not None and tree is not None and _looks_like_code(tree):
            nonblank = [t for t in lines if t[0].strip()]
            regions.append(
                _Candidate(
                    whole,
                    nonblank[0][1],
                    nonblank[-1][2],
                    fenced=False,
                    lang="",
                    closed=True,
                    code=code,
                    tree=tree,
                    kept=len(whole),
                )
            )
    if not regions:
        regions, broken_regions = _unfenced_regions(lines, outside, entry_point, budget)

    candidates = sorted(blocks + regions, key=lambda c: c.start)
    for n, c in enumerate(candidates):
        c.index = n

    usable = [
        c
        for c in candidates
        if c.code is not None
        and c.tree is not None
        and c.code.strip()
        and (_looks_like_code(c.tree) or (c.fenced and c.lang == "python"))
    ]
    if usable:
        best = max(
            usable,
            key=lambda c: (
                _defines(c.tree, entry_point),
                _has_def(c.tree),
                c.lang_ok,
                c.index,
            ),
        )
        end = best.end
        return ParsedResponse(
            explanation=_normalize_text(text[: best.start]),
            code=clean_block(best.code or ""),
            repair=best.repair,
            span=(best.start, end),
            after=_normalize_text(text[end:]),
        )

    broken = [
        c
        for c in blocks + broken_regions
        if c.code is None
        and c.lang_ok
        and c.raw.strip()
        and (
            c.lang == "python"
            or not c.fenced
            or _CODE_START.match(c.raw.lstrip())
            or _STATEMENT_LIKE.match(c.raw.lstrip())
        )
    ]
    if broken:
        best = max(
            broken,
            key=lambda c: (
                _defines_text(c.raw, entry_point),
                bool(re.search(r"^\s*(?:def|class)\s", c.raw, re.M)),
                c.start,
            ),
        )
        return ParsedResponse(
            explanation=_normalize_text(text[: best.start]),
            code=None,
            reason="syntax_error",
            broken_code=best.raw,
            span=(best.start, best.end),
            after=_normalize_text(text[best.end :]),
        )
    # An answer cut off right after opening its code block: the dangling fence is no explanation.
    dangling = [b for b in blocks if b.fenced and not b.closed and not b.raw.strip()]
    cut = dangling[-1].start if dangling else len(text)
    return ParsedResponse(explanation=_normalize_text(text[:cut]), code=None, reason="no_code")
