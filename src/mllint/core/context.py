"""What a rule sees of one file: the parsed module, shared analyses, and ways to report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Severity
from mllint.core.locator import Locator

if TYPE_CHECKING:
    from packaging.version import Version

    from mllint.core.rule import Rule
    from mllint.settings import Settings

N = TypeVar("N", bound=cst.CSTNode)
A = TypeVar("A")


class NodeIndex(cst.CSTVisitor):
    """One walk over the module: every node grouped by type, and each node's parent."""

    def __init__(self) -> None:
        self.by_type: Dict[type, List[cst.CSTNode]] = {}
        self.parent: Dict[cst.CSTNode, cst.CSTNode] = {}
        self.order: Dict[cst.CSTNode, int] = {}
        self.end: Dict[cst.CSTNode, int] = {}  # order of the last node inside (the node itself if a leaf)
        self._stack: List[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.by_type.setdefault(type(node), []).append(node)
        self.order[node] = len(self.order)
        if self._stack:
            self.parent[node] = self._stack[-1]
        self._stack.append(node)
        return True

    def on_leave(self, original_node: cst.CSTNode) -> None:
        self.end[original_node] = len(self.order) - 1
        self._stack.pop()


_EXIT = object()
# Per node class: the fields its ``_visit_and_replace_children`` visits, in that order (None:
# unknown, use libcst's own visit). Read once per class from libcst's source, so the fast walk
# below meets the nodes in exactly the order (and with exactly the parents) of ``module.visit``.
_CHILD_FIELDS: Dict[type, Optional[Tuple[str, ...]]] = {}


def _child_fields(kind: type) -> Optional[Tuple[str, ...]]:
    if kind not in _CHILD_FIELDS:
        _CHILD_FIELDS[kind] = _read_child_fields(kind)
    return _CHILD_FIELDS[kind]


def _read_child_fields(kind: type) -> Optional[Tuple[str, ...]]:
    import ast
    import dataclasses
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(kind._visit_and_replace_children))
        tree = ast.parse(source)
        names = {f.name for f in dataclasses.fields(kind)}
    except (OSError, TypeError, SyntaxError):
        return None
    found: List[Tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name.startswith("visit_"):
            if len(node.args) < 3 or not isinstance(node.args[1], ast.Constant) \
                    or node.args[1].value not in names:
                return None  # not the shape this reader knows: use libcst's visit
            found.append((node.lineno, node.col_offset, node.args[1].value))
    fields: List[str] = []
    for _, _, field in sorted(found):
        if field not in fields:
            fields.append(field)
    return tuple(fields)


def _fast_index(module: cst.Module) -> Optional[NodeIndex]:
    """``NodeIndex`` without libcst's visitor, which rebuilds (and re-validates) every node it
    passes; None when some node class is not understood (then libcst's visit is used)."""
    index = NodeIndex()
    by_type, parent, order, end = index.by_type, index.parent, index.order, index.end
    node_type = cst.CSTNode
    count = 0
    stack: List[Any] = [module, None]
    pop, push = stack.pop, stack.append
    while stack:
        up = pop()
        node = pop()
        if up is _EXIT:
            end[node] = count - 1
            continue
        kind = type(node)
        by_type.setdefault(kind, []).append(node)
        order[node] = count
        count += 1
        if up is not None:
            parent[node] = up
        push(node)
        push(_EXIT)
        fields = _CHILD_FIELDS.get(kind, ()) if kind in _CHILD_FIELDS else _child_fields(kind)
        if fields is None:
            return None
        children: List[Any] = []
        for name in fields:
            value = getattr(node, name)
            if isinstance(value, node_type):
                children.append(value)
            elif isinstance(value, (list, tuple)):
                children.extend(v for v in value if isinstance(v, node_type))
        for child in reversed(children):
            push(child)
            push(node)
    return index


class Context:
    def __init__(self, source: str, path: str, module: cst.Module, settings: "Settings",
                 locator: Optional[Locator] = None) -> None:
        self.source = source
        self.path = path
        self.module = module
        self.settings = settings
        self.locator = locator or Locator(source)
        self.rule: Optional["Rule"] = None
        self._analyses: Dict[Any, Any] = {}
        self._index: Optional[NodeIndex] = None
        self._positions: Any = None

    # -- shared structure --------------------------------------------------------------------
    def _ensure_index(self) -> NodeIndex:
        if self._index is None:
            index = _fast_index(self.module)
            if index is None:
                index = NodeIndex()
                self.module.visit(index)
            self._index = index
        return self._index

    def nodes(self, kind: Type[N]) -> Sequence[N]:
        """Every node of exactly this libcst type, in source order."""
        return self._ensure_index().by_type.get(kind, [])  # type: ignore[return-value]

    def parent(self, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        return self._ensure_index().parent.get(node)

    def order(self, node: cst.CSTNode) -> int:
        """Position of ``node`` in a pre-order walk: smaller means earlier in the source."""
        return self._ensure_index().order[node]

    def end_order(self, node: cst.CSTNode) -> int:
        """``order`` of the last node inside ``node``: ``a`` ends before ``b`` starts when
        ``end_order(a) < order(b)``."""
        return self._ensure_index().end[node]

    def ancestors(self, node: cst.CSTNode) -> Iterable[cst.CSTNode]:
        parent = self.parent(node)
        while parent is not None:
            yield parent
            parent = self.parent(parent)

    def enclosing(self, node: cst.CSTNode, kind: Type[N]) -> Optional[N]:
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, kind):
                return ancestor
        return None

    def get(self, analysis: Callable[["Context"], A]) -> A:
        """A shared analysis of this module, computed once (``analysis`` is a class taking ctx)."""
        if analysis not in self._analyses:
            self._analyses[analysis] = analysis(self)
        return self._analyses[analysis]

    @property
    def names(self):
        from mllint.analysis.names import ImportMap

        return self.get(ImportMap)

    def target_version(self, package: str) -> Optional["Version"]:
        """The version of ``package`` this file targets: configured, pinned in the project, or
        else the latest mllint knows (None only for packages mllint does not track)."""
        from mllint.versions import resolve

        return resolve(package, self.settings.target_versions, self.settings.version_sources)[0]

    def version_source(self, package: str) -> Optional[str]:
        """Where the target version came from (``requirements.txt:3``, ``--target-version``...),
        or None when it is only assumed to be the latest."""
        from mllint.versions import resolve

        return resolve(package, self.settings.target_versions, self.settings.version_sources)[1]

    def version_fact(self, package: str) -> str:
        """``trl 0.15.2 (requirements.txt:3)``: the version and its source, for messages."""
        from mllint.versions import describe

        return describe(package, self.settings.target_versions, self.settings.version_sources)

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    # -- positions ----------------------------------------------------------------------------
    def span(self, node: cst.CSTNode) -> Tuple[int, int]:
        """Character offsets of ``node`` (without its surrounding whitespace)."""
        if self._positions is None:
            wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
            self._positions = wrapper.resolve(PositionProvider)
        rng = self._positions[node]
        loc = self.locator
        return (loc.offset(rng.start.line, rng.start.column + 1),
                loc.offset(rng.end.line, rng.end.column + 1))

    # -- fixes -------------------------------------------------------------------------------
    def edit(self, start: int, end: int, content: str) -> Edit:
        return Edit(start, end, content, self.locator.location(start), self.locator.location(end))

    def replace(self, node: cst.CSTNode, content: str) -> Edit:
        start, end = self.span(node)
        return self.edit(start, end, content)

    def insert_statement_after(self, stmt: cst.CSTNode, code: str) -> Edit:
        """An edit adding ``code`` as a new line after ``stmt``, at the same indentation."""
        start, end = self.span(stmt)
        loc = self.locator
        row = loc.location(end).row
        first_line = loc.line(loc.location(start).row)
        indent = first_line[: len(first_line) - len(first_line.lstrip())]
        at = loc.line_end(row)
        return self.edit(at, at, loc.newline() + indent + code)

    @staticmethod
    def fix(message: str, applicability: Applicability, *edits: Edit) -> Fix:
        return Fix(message, applicability, tuple(sorted(edits, key=lambda e: (e.start, e.end))))

    # -- reporting ---------------------------------------------------------------------------
    def report(self, node: cst.CSTNode, message: str, *, fix: Optional[Fix] = None,
               help: Optional[str] = None, severity: Optional[Severity] = None) -> Diagnostic:
        """A diagnostic of the running rule on ``node``; ``severity`` overrides the rule's own for
        this finding (e.g. a warning that is an error for one model family or library version)."""
        rule = self.rule
        assert rule is not None, "report() outside a rule"
        start, end = self.span(node)
        return Diagnostic(
            code=rule.code,
            name=rule.name,
            message=message,
            severity=severity or rule.severity,
            location=self.locator.location(start),
            end_location=self.locator.location(end),
            fix=fix,
            help=help,
            url=rule.url(),
            start=start,
            end=end,
        )
