"""The package's structural rules, checked on the source with ``ast`` (fxcam is never imported).

1. no import cycle inside fxcam/ (module-level and function-local imports);
2. no import of a private name or module across modules, no ``obj._name`` on another module's privates;
3. methods/, ops.py and reshape.py import only the standard library, torch and fxcam's lower layers;
4. no file over 400 lines;
5. no registered method function over 40 lines of code;
6. one home per helper: tqdm, interpolation, normalization/upsampling, the classifier finder,
   turning targets into class indices;
7. every ``raise`` raises an ``FxcamError`` (or an fxcam subclass of it).

Imports under ``if TYPE_CHECKING:`` are annotations only and ignored by every rule. Each test
lists every offender with file:line; each also checks that its walker saw enough of the package
(so that a broken walker cannot pass).
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fxcam"
MAX_FILE_LINES = 400
MAX_METHOD_LINES = 40


# =============================================================================================
# the walker


@dataclass
class Import:
    line: int
    target: str  # the dotted module named by the statement (relative imports resolved); _edges maps it to files
    names: tuple[str, ...] = ()  # for ``from X import a, b``: the imported names
    local: bool = False  # inside a function (lazy)


@dataclass
class Module:
    name: str  # fxcam.methods.gradient
    path: Path
    is_pkg: bool
    source: str
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT.parent).as_posix()

    @property
    def package(self) -> str:
        return self.name if self.is_pkg else self.name.rpartition(".")[0]

    def at(self, line: int) -> str:
        return f"{self.rel}:{line}"


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def walk(node: ast.AST):
    """``ast.walk`` in source order that skips the body of ``if TYPE_CHECKING:`` (not its ``else``)."""
    yield node
    children = node.orelse if _is_type_checking(node) else ast.iter_child_nodes(node)
    for child in children:
        yield from walk(child)


def _functions(node: ast.AST):
    return (n for n in walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _own_nodes(fn: ast.AST):
    """The nodes of a function's body, without those of the functions and classes nested in it."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if _is_type_checking(node):
                stack.extend(node.orelse)
            else:
                stack.extend(ast.iter_child_nodes(node))


@functools.cache
def package() -> dict[str, Module]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        source = path.read_text(encoding="utf-8")
        modules[name] = Module(name, path, is_pkg, source, ast.parse(source, str(path)))
    for mod in modules.values():
        local = {id(n) for fn in _functions(mod.tree) for n in walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in walk(mod.tree):
            if isinstance(node, ast.Import):
                mod.imports += [Import(node.lineno, a.name, (), id(node) in local) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.package.split(".")
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                names = tuple(a.name for a in node.names)
                mod.imports.append(Import(node.lineno, base, names, id(node) in local))
    return modules


def _is_fxcam(name: str) -> bool:
    return name == "fxcam" or name.startswith("fxcam.")


def _edges(mod: Module) -> list[tuple[str, Import]]:
    """The fxcam modules ``mod`` imports: ``from P import n`` loads the submodule ``P.n`` when that
    file exists, else ``P`` (its ``__init__``); ``import a.b.c`` loads ``a.b.c`` (the longest
    prefix that is a file)."""
    modules = package()
    out = []
    for imp in mod.imports:
        if not _is_fxcam(imp.target):
            continue
        if imp.names:
            targets = {f"{imp.target}.{n}" if f"{imp.target}.{n}" in modules else imp.target for n in imp.names}
        else:
            parts = imp.target.split(".")
            targets = {next(".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules)}
        out += [(t, imp) for t in sorted(targets) if t in modules and t != mod.name]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _rel(name: str) -> str:
    return f"{package()[name].rel}" if name in package() else name


def _assert_none(offenders: list[str], what: str) -> None:
    assert not offenders, f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders)


def test_the_walker_sees_the_package():
    modules = package()
    edges = [e for mod in modules.values() for e in _edges(mod)]
    assert len(modules) > 20 and "fxcam.methods.gradient" in modules and "fxcam.ops" in modules
    assert len(edges) > 20, edges
    assert any(imp.local for mod in modules.values() for imp in mod.imports)  # lazy imports are seen


# =============================================================================================
# 1. no import cycle


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); the components with more than one module."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles():
    modules = package()
    graph = {name: {t for t, _ in _edges(mod)} for name, mod in modules.items()}
    assert sum(map(len, graph.values())) > 20
    offenders = []
    for component in _strongly_connected(graph):
        inside = set(component)
        lines = [
            f"{modules[a].at(imp.line)} {a} -> {b}{' (function-local)' if imp.local else ''}"
            for a in component
            for b, imp in _edges(modules[a])
            if b in inside
        ]
        offenders.append(f"cycle of {len(component)} modules {component}:\n    " + "\n    ".join(lines))
    _assert_none(offenders, "import cycle(s)")


# =============================================================================================
# 2. no private names across modules


def _defined_privates() -> dict[str, set[str]]:
    """Private names each module defines: functions, classes, assigned names and ``self._x`` attributes."""
    out = {}
    for name, mod in package().items():
        found = set()
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                found.add(node.id if isinstance(node, ast.Name) else node.attr)
        out[name] = {n for n in found if _private(n)}
    return out


def test_no_private_imports_or_attributes_across_modules():
    modules = package()
    offenders = []
    for mod in modules.values():
        for imp in mod.imports:
            if not _is_fxcam(imp.target):
                continue  # third-party privates (torch._C, torch.utils._pytree) are outside this rule
            for part in imp.target.split(".")[1:]:
                if _private(part):
                    offenders.append(f"{mod.at(imp.line)} imports from private module {imp.target}")
            for n in imp.names:
                if _private(n):
                    offenders.append(f"{mod.at(imp.line)} imports private name {n} from {imp.target}")

    privates = _defined_privates()
    everywhere = set().union(*privates.values())
    assert len(everywhere) > 20
    for name, mod in modules.items():
        for node in walk(mod.tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
                and _private(node.attr)
                and node.attr in everywhere
                and node.attr not in privates[name]
            ):
                homes = sorted(_rel(m) for m, names in privates.items() if node.attr in names)
                offenders.append(f"{mod.at(node.lineno)} uses {node.value.id}.{node.attr} (defined in {', '.join(homes)})")
    _assert_none(offenders, "private name(s) used across modules")


# =============================================================================================
# 3. layers: the methods, ops and reshape import only the standard library, torch and lower fxcam

LOW_LAYER = ("fxcam.methods", "fxcam.ops", "fxcam.reshape")
UPPER = ("api", "maps", "graph", "exporter", "dff", "metrics", "compat", "viz", "demo", "cli", "run", "report")
ALLOWED_EXTERNAL = {"torch"}  # and the standard library


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_lower_layers_import_only_stdlib_torch_and_lower_fxcam():
    modules = [m for m in package().values() if any(_under(m.name, p) for p in LOW_LAYER)]
    assert len(modules) >= 9 and sum(len(m.imports) for m in modules) > 20
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    for mod in modules:
        for imp in mod.imports:
            if _is_fxcam(imp.target):
                loaded = [t for t, i in _edges(mod) if i is imp] or [imp.target]
                for t in loaded:
                    if any(_under(t, f"fxcam.{u}") for u in UPPER):
                        offenders.append(f"{mod.at(imp.line)} imports the upper layer {t}")
                continue
            root = imp.target.split(".")[0]
            if root not in stdlib and root not in ALLOWED_EXTERNAL:
                hint = " (use fxcam.progress)" if root == "tqdm" else ""
                offenders.append(f"{mod.at(imp.line)} imports {imp.target}{hint}")
    _assert_none(offenders, "import(s) that leave the lower layers' dependencies")


# =============================================================================================
# 4. file size


def test_no_file_over_400_lines():
    modules = package()
    offenders = [
        f"{m.rel}: {n} lines" for m in modules.values() if (n := len(m.source.splitlines())) > MAX_FILE_LINES
    ]
    assert sum(len(m.source.splitlines()) for m in modules.values()) > 2000
    _assert_none(offenders, f"file(s) over {MAX_FILE_LINES} lines")


# =============================================================================================
# 5. method size


def _is_register(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(func, ast.Name) and func.id == "register") or (
        isinstance(func, ast.Attribute) and func.attr == "register"
    )


def _code_lines(mod: Module, fn: ast.FunctionDef) -> int:
    """Lines from ``def`` to the end, without the docstring, blank lines and comment-only lines."""
    skip = set()
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        skip = set(range(first.lineno, first.end_lineno + 1))
    lines = mod.source.splitlines()
    return sum(
        1
        for i in range(fn.lineno, fn.end_lineno + 1)
        if i not in skip and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")
    )


def test_no_method_over_40_lines():
    registered = [
        (mod, fn)
        for mod in package().values()
        if _under(mod.name, "fxcam.methods")
        for fn in _functions(mod.tree)
        if any(_is_register(d) for d in fn.decorator_list)
    ]
    assert len(registered) > 20
    offenders = [
        f"{mod.at(fn.lineno)} {fn.name}: {n} lines"
        for mod, fn in registered
        if (n := _code_lines(mod, fn)) > MAX_METHOD_LINES
    ]
    _assert_none(offenders, f"registered method(s) over {MAX_METHOD_LINES} lines of code")


# =============================================================================================
# 6. one home per helper


def _aliases(mod: Module) -> dict[str, str]:
    """Local name -> dotted name, from every import of the module (``F`` -> ``torch.nn.functional``)."""
    out = {}
    for node in walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _tqdm_imports():
    found = [(m, i) for m in package().values() for i in m.imports if i.target.split(".")[0] == "tqdm"]
    home = [m.rel for m, _ in found if m.name == "fxcam.progress"]
    return home, [f"{m.at(i.line)} imports {i.target}" for m, i in found if m.name != "fxcam.progress"]


INTERPOLATE = {f"torch.nn.functional.{f}" for f in ("interpolate", "upsample", "upsample_bilinear", "upsample_nearest")}


def _interpolate_calls():
    found = []
    for mod in package().values():
        aliases = _aliases(mod)
        found += [
            (mod, node)
            for node in walk(mod.tree)
            if isinstance(node, ast.Call) and _dotted(node.func, aliases) in INTERPOLATE
        ]
    home = [mod.at(n.lineno) for mod, n in found if mod.name == "fxcam.ops"]
    return home, [f"{mod.at(n.lineno)} calls {_dotted(n.func, _aliases(mod))}" for mod, n in found if mod.name != "fxcam.ops"]


MAP_HELPER = re.compile(r"_?(normali[sz]e|min_?max|resize|upsample)(_\w+)?")


def _map_helpers():
    """Functions (and lambdas bound to a name) named like a map normalizer or upsampler."""
    found = []
    for mod in package().values():
        for node in walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and MAP_HELPER.fullmatch(node.name):
                found.append((mod, node.lineno, node.name))
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                found += [(mod, node.lineno, t.id) for t in node.targets
                          if isinstance(t, ast.Name) and MAP_HELPER.fullmatch(t.id)]
    home = [f"{m.at(line)} {name}" for m, line, name in found if m.name == "fxcam.ops"]
    return home, [f"{m.at(line)} defines {name}" for m, line, name in found if m.name != "fxcam.ops"]


GRAPH_WALK = {"nodes", "users", "all_input_nodes", "named_modules", "modules"}


def _classifier_finders():
    """Functions named ``*classifier*`` whose own body walks a graph (fx nodes, their users, or modules)."""
    found = [
        f"{mod.at(fn.lineno)} {fn.name}"
        for mod in package().values()
        for fn in _functions(mod.tree)
        if "classifier" in fn.name.lower()
        and any(isinstance(n, ast.Attribute) and n.attr in GRAPH_WALK for n in _own_nodes(fn))
    ]
    # the home is whichever comes first; every further definition is an offender
    return found[:1], [f"{f} (another classifier finder besides {found[0]})" for f in found[1:]]


LOGITS = re.compile(r"logit|^out(put)?s?$|score")


def _tensor_call(call: ast.Call) -> tuple[str, bool]:
    """For ``x.f(dim, ...)`` or ``torch.f(x, dim, ...)``: the name of ``x`` (a variable or the last
    attribute; "" for an expression) and whether ``dim`` is 1 or -1."""
    value = call.func.value
    if isinstance(value, ast.Name) and value.id == "torch" and call.args:
        value, args = call.args[0], call.args[1:2]
    else:
        args = call.args[:1]
    dims = [*args, *(k.value for k in call.keywords if k.arg == "dim")]
    dims = [-d.operand.value if isinstance(d, ast.UnaryOp) and isinstance(d.operand, ast.Constant) else
            getattr(d, "value", None) for d in dims]
    name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", "")
    return name, any(d in (1, -1) for d in dims if isinstance(d, int))


def _target_resolvers():
    """Heuristic: a function whose own body calls ``<logits>.argmax(1)`` (or ``torch.argmax(<logits>, 1)``;
    the tensor named like logits/output/scores, so argmaxes over maps do not count) and
    ``.gather(1, ...)`` turns ``None`` targets into class indices and scores. Missed: other
    spellings (``max(1).indices``, ``topk``) and tensors named otherwise.
    ``fxcam/targets.py`` is the home (``resolve`` and its traceable core ``resolve_indices``)."""
    found = []
    for mod in package().values():
        for fn in _functions(mod.tree):
            calls = [n for n in _own_nodes(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
            argmax = any(c.func.attr == "argmax" and _tensor_call(c)[1] and LOGITS.search(_tensor_call(c)[0]) for c in calls)
            gather = any(c.func.attr == "gather" and _tensor_call(c)[1] for c in calls)
            if argmax and gather:
                found.append((mod, fn))
    home = [f"{m.at(f.lineno)} {f.name}" for m, f in found if m.name == "fxcam.targets"]
    return home, [f"{m.at(f.lineno)} {f.name}" for m, f in found if m.name != "fxcam.targets"]


HELPERS = {
    "tqdm is imported only in fxcam/progress.py": _tqdm_imports,
    "F.interpolate is called only in fxcam/ops.py": _interpolate_calls,
    "map normalizers/upsamplers are defined only in fxcam/ops.py": _map_helpers,
    "one classifier finder": _classifier_finders,
    "fxcam.targets alone turns None/int targets into class indices": _target_resolvers,
}


@pytest.mark.parametrize("rule", list(HELPERS))
def test_one_home_per_helper(rule):
    home, offenders = HELPERS[rule]()
    assert home, f"{rule}: the home itself was not found, so the check is blind"
    _assert_none(offenders, f"offender(s) of '{rule}' (home: {', '.join(home)})")


# =============================================================================================
# 7. every raise is an FxcamError

BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
# not errors but control flow: iteration, and a signal turned into an interrupt so that output is cleaned up
CONTROL_FLOW = {"StopIteration", "KeyboardInterrupt", "SystemExit"}


def _control_flow_classes() -> set[str]:
    """fxcam classes deriving directly from BaseException/KeyboardInterrupt: signals, not errors."""
    found = set()
    for mod in package().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & {"BaseException", "KeyboardInterrupt"}:
                    found.add(node.name)
    return found


def _fxcam_errors() -> set[str]:
    """Names of the classes defined in fxcam that derive (through fxcam classes) from FxcamError."""
    bases = {}
    for mod in package().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    errors = {"FxcamError"}
    while True:
        more = {name for name, b in bases.items() if b & errors} - errors
        if not more:
            return errors
        errors |= more


def _error_factories(errors: set[str]) -> set[str]:
    """Functions defined in fxcam whose return annotation is an FxcamError class (``raise make_error(...)``)."""
    out = set()
    for mod in package().values():
        for fn in _functions(mod.tree):
            ann = fn.returns
            name = ann.id if isinstance(ann, ast.Name) else ann.value if isinstance(ann, ast.Constant) else None
            if name in errors:
                out.add(fn.name)
    return out


def _is_stub(fn: ast.AST | None) -> bool:
    if fn is None:
        return False
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    abstract = any((getattr(d, "id", None) or getattr(d, "attr", None)) == "abstractmethod" for d in fn.decorator_list)
    return abstract or (len(body) == 1 and isinstance(body[0], ast.Raise))


def _raises(mod: Module):
    """(raise node, the innermost enclosing function, the names bound by the enclosing ``except ... as``)."""

    def visit(node, fn, caught):
        if isinstance(node, ast.Raise):
            yield node, fn, caught
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fn, caught = node, frozenset()
        if isinstance(node, ast.ExceptHandler) and node.name:
            caught = caught | {node.name}
        for child in ast.iter_child_nodes(node):
            yield from visit(child, fn, caught)

    yield from visit(mod.tree, None, frozenset())


def test_every_raise_is_an_fxcam_error():
    errors = _fxcam_errors()
    factories = _error_factories(errors)
    signals = _control_flow_classes()
    assert {"LayerNotFoundError", "TraceError", "ReshapeError"} <= errors
    offenders, seen = [], 0
    for mod in package().values():
        for node, fn, caught in _raises(mod):
            seen += 1
            exc = node.exc
            if exc is None or (isinstance(exc, ast.Name) and exc.id in caught):
                continue  # a re-raise
            called = exc.func if isinstance(exc, ast.Call) else exc
            name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", None)
            if name in errors or name in factories or name in CONTROL_FLOW | signals:
                continue
            if name == "NotImplementedError" and _is_stub(fn):
                continue
            if name == "AttributeError" and getattr(fn, "name", None) == "__getattr__":
                continue  # the attribute protocol (a module's PEP 562 __getattr__)
            what = name if name in BUILTIN_EXCEPTIONS else f"{name or ast.unparse(called)} (not an FxcamError)"
            offenders.append(f"{mod.at(node.lineno)} raises {what}")
    assert seen > 50
    _assert_none(offenders, "raise(s) of something other than an FxcamError")
