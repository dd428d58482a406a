"""The command line: ``mllint [check] PATH...`` and ``mllint rule CODE``.

Exit codes (as ruff): 0 nothing left to report, 1 findings remain (or a diff/fix with the flags
that ask for it), 2 a usage, configuration or internal error, reported in one line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from mllint import __version__
from mllint.core.registry import default_registry
from mllint.output import FORMATS, renderer
from mllint.output.progress import Progress
from mllint.output.text import RenderOptions
from mllint.cache import ENV_CACHE_DIR, default_cache_dir
from mllint.runner import FileResult, Mode, check_files, discover, process_stdin
from mllint.settings import ConfigError, ConfigResolver, Settings, enabled_codes, normalize_codes, parse_version, validate_selectors
from mllint.versions import TRACKED, canonical_package, describe

INTERNAL_ERROR = "MLL999"


class DefaultGroup(click.Group):
    """``mllint PATH...`` means ``mllint check PATH...``."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["check", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mllint", message="%(prog)s %(version)s")
def cli() -> None:
    """mllint: find the bugs that make ML training runs converge to a broken model."""


def _codes(values: Sequence[str], option: str) -> Tuple[str, ...]:
    codes = normalize_codes(c for value in values for c in value.split(","))
    validate_selectors(codes, default_registry().rules, option)
    return codes


def _target_versions(values: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for value in values:
        for item in value.split(","):
            package, sep, version = item.partition("=")
            if not sep or not package.strip() or not version.strip():
                raise ConfigError(f"--target-version takes PACKAGE=VERSION, not `{item}`")
            out[canonical_package(package)] = parse_version(version.strip(), "--target-version")
    return out


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--fix/--no-fix", default=None, help="Apply safe fixes.")
@click.option("--unsafe-fixes/--no-unsafe-fixes", default=None, help="Also show and apply unsafe fixes.")
@click.option("--diff", is_flag=True, help="Print a diff of the fixes instead of writing them (exit 1 if any).")
@click.option("--fix-only", is_flag=True, help="Apply fixes but do not report what is left.")
@click.option("--exit-non-zero-on-fix", is_flag=True, help="Exit 1 when a fix was applied.")
@click.option("--exit-zero", "-e", is_flag=True, help="Exit 0 even when findings remain.")
@click.option("--add-noqa", is_flag=True, help="Add `# noqa` directives for every finding.")
@click.option("--select", multiple=True, metavar="CODES", help="Rules to enable (codes or prefixes, ALL).")
@click.option("--extend-select", multiple=True, metavar="CODES", help="Rules to enable on top of the selection.")
@click.option("--ignore", multiple=True, metavar="CODES", help="Rules to disable.")
@click.option("--output-format", type=click.Choice(FORMATS), default=None,
              help="Output format (default: full on a terminal, concise otherwise).")
@click.option("--output-file", "-o", type=click.Path(dir_okay=False), help="Write the report to this file.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Use this config file only.")
@click.option("--isolated", is_flag=True, help="Ignore all configuration files.")
@click.option("--target-version", multiple=True, metavar="PKG=VER",
              help="Library version the code targets, e.g. trl=0.15 (repeatable).")
@click.option("--stdin-filename", metavar="PATH", help="The path standard input stands for (with `-`).")
@click.option("--force-exclude", is_flag=True, help="Apply excludes to files named explicitly, too.")
@click.option("--preview", is_flag=True, default=None, help="Enable preview rules.")
@click.option("--statistics", is_flag=True, help="Print the number of findings per rule instead of the findings.")
@click.option("--show-settings", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--quiet", "-q", is_flag=True, help="Print findings only, no summary.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes (default: the available cores).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the result cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Result cache directory (default: .mllint_cache next to the config file).")
@click.option("--no-triage", is_flag=True, hidden=True,
              help="Run every rule on every file (no prefilter; for tests and benchmarks).")
def check(paths: Tuple[str, ...], **options: Any) -> None:
    """Check PATHS (files or directories; default `.`; `-` for standard input)."""
    try:
        code = _check(paths, options)
    except ConfigError as exc:
        click.echo(f"mllint: error: {exc}", err=True)
        code = 2
    except OSError as exc:
        click.echo(f"mllint: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        code = 2
    sys.exit(code)


def _overrides(options: Dict[str, Any]) -> Dict[str, Any]:
    overrides: Dict[str, Any] = {}
    if options["select"]:
        overrides["select"] = _codes(options["select"], "--select")
    if options["extend_select"]:
        overrides["extend_select"] = _codes(options["extend_select"], "--extend-select")
    if options["ignore"]:
        overrides["ignore"] = _codes(options["ignore"], "--ignore")
    if options["target_version"]:
        overrides["target_versions"] = _target_versions(options["target_version"])
    if options["unsafe_fixes"] is not None:
        overrides["unsafe_fixes"] = options["unsafe_fixes"]
    if options["preview"]:
        overrides["preview"] = True
    if options["force_exclude"]:
        overrides["force_exclude"] = True
    cache_dir = options["cache_dir"] or os.environ.get(ENV_CACHE_DIR)
    if cache_dir:
        overrides["cache_dir"] = os.path.abspath(cache_dir)
    if options["no_triage"]:
        overrides["triage"] = False
    return overrides


def _check(paths: Tuple[str, ...], options: Dict[str, Any]) -> int:
    config_file = options["config_file"]
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"config file `{config_file}` does not exist")
    resolver = ConfigResolver(_overrides(options), Path(config_file) if config_file else None,
                              isolated=options["isolated"])
    paths = paths or (".",)
    use_stdin = paths == ("-",)
    if "-" in paths and not use_stdin:
        raise ConfigError("`-` (standard input) cannot be combined with other paths")
    if options["show_settings"]:
        anchor = Path(options["stdin_filename"] or ".") if use_stdin else Path(paths[0])
        click.echo(_describe_settings(resolver.for_path(anchor.absolute()), anchor))
        return 0

    diff = options["diff"]
    fix_only = options["fix_only"] or diff
    fix = bool(options["fix"]) or fix_only
    results: List[FileResult] = []
    if use_stdin:
        display = options["stdin_filename"] or "-"
        settings = resolver.for_path(Path(options["stdin_filename"] or "stdin").absolute())
        mode = Mode(fix=fix, unsafe=settings.unsafe_fixes, diff=diff, add_noqa=options["add_noqa"])
        result = process_stdin(sys.stdin.buffer.read(), display, settings, mode)
        results.append(result)
        if (fix or options["add_noqa"]) and not diff and result.source is not None:
            sys.stdout.write(result.source)
            sys.stdout.flush()
    else:
        files = discover(paths, resolver, options["force_exclude"])
        progress = Progress(len(files), enabled=None if not options["quiet"] else False)
        def mode_for(settings: Settings) -> Mode:
            return Mode(fix=fix, unsafe=settings.unsafe_fixes, diff=diff, add_noqa=options["add_noqa"])

        try:
            checked = check_files(files, resolver.for_path, mode_for, jobs=options["jobs"],
                                  use_cache=not options["no_cache"])
            for done, result in enumerate(checked, 1):
                results.append(result)
                progress.update(done)
        finally:
            progress.finish()

    unsafe_shown = bool(options["unsafe_fixes"])
    if results:  # `unsafe-fixes = true` in the config shows unsafe fixes as fixable, too
        anchor = Path(options["stdin_filename"] or "stdin").absolute() if use_stdin else Path(paths[0])
        unsafe_shown = unsafe_shown or resolver.for_path(anchor).unsafe_fixes
    return _report(results, options, fix=fix, fix_only=fix_only, diff=diff, unsafe=unsafe_shown,
                   stdin_fixed=use_stdin and fix and not diff)


def _report(results: List[FileResult], options: Dict[str, Any], *, fix: bool, fix_only: bool,
            diff: bool, unsafe: bool, stdin_fixed: bool) -> int:
    quiet = options["quiet"]
    internal = any(d.code == INTERNAL_ERROR for r in results for d in r.diagnostics)
    if options["add_noqa"]:
        added = sum(r.noqa_added for r in results)
        if not quiet:
            click.echo(f"Added {added} noqa directive{'s' if added != 1 else ''}.", err=True)
        return 2 if internal else 0
    fixed = sum(r.fixed for r in results)
    out_stream_is_tty = sys.stdout.isatty() and not options["output_file"]
    fmt = options["output_format"] or ("full" if out_stream_is_tty else "concise")
    render_options = RenderOptions(unsafe_fixes=unsafe,
                                   color=out_stream_is_tty and fmt == "full" and "NO_COLOR" not in os.environ)
    if diff:
        text = "".join(r.diff for r in results if r.diff)
        _emit(text, options["output_file"], to_stderr=False)
        if not quiet:
            n = sum(1 for r in results if r.diff)
            click.echo(f"Would fix {fixed} error{'s' if fixed != 1 else ''} in {n} file{'s' if n != 1 else ''}."
                       if fixed else "No fixes available.", err=True)
        return 2 if internal else (1 if fixed else 0)
    shown = results
    if fix_only:
        shown = [r.with_diagnostics([d for d in r.diagnostics if d.code.startswith("MLL90") or d.code == INTERNAL_ERROR])
                 for r in results]
    remaining = sum(len(r.diagnostics) for r in shown)
    if options["statistics"]:
        from mllint.output.statistics import render_statistics

        text = render_statistics(shown, render_options, as_json=fmt == "json")
    else:
        text = renderer(fmt)(shown, render_options)
    if text:
        _emit(text, options["output_file"], to_stderr=stdin_fixed)
    if not quiet:
        _summary(shown, remaining, fixed, fix, unsafe)
    if internal:
        return 2
    if options["exit_non_zero_on_fix"] and fixed:
        return 1
    if remaining and not options["exit_zero"]:
        return 1
    return 0


def _emit(text: str, output_file: Optional[str], to_stderr: bool) -> None:
    if output_file:
        try:
            # A file name that is not UTF-8 (kept by Python as surrogates) is written escaped.
            Path(output_file).write_text(text, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise ConfigError(f"cannot write --output-file `{output_file}`: {exc.strerror or exc}") from None
    elif text:
        click.echo(text, nl=False, err=to_stderr)


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith(("x", "s")) else f"{n} {word}s"


def _summary(results: Sequence[FileResult], remaining: int, fixed: int, fix: bool, unsafe: bool) -> None:
    diagnostics = [d for r in results for d in r.diagnostics]
    if fix and fixed:
        click.echo(f"Found {_plural(fixed + remaining, 'error')} ({fixed} fixed, {remaining} remaining).", err=True)
    elif remaining:
        click.echo(f"Found {_plural(remaining, 'error')}.", err=True)
    else:
        click.echo("All checks passed!", err=True)
    fixable = sum(1 for d in diagnostics if d.fixable(unsafe))
    hidden = sum(1 for d in diagnostics if d.fix is not None and not d.fixable(unsafe)
                 and d.fix.applicability.value == "unsafe")
    if fixable or hidden:
        parts = []
        if fixable:
            parts.append(f"[*] {fixable} fixable with the `--fix` option")
        if hidden:
            hint = f"{_plural(hidden, 'hidden fix')} can be enabled with the `--unsafe-fixes` option"
            parts.append(f"({hint})" if fixable else f"No fixes available ({hint}).")
        line = " ".join(parts)
        click.echo(line if line.endswith(".") else line + ".", err=True)


def _describe_settings(settings: Settings, anchor: Path) -> str:
    registry = default_registry()
    codes = enabled_codes(settings, registry.rules, str(anchor))
    lines = [
        f"Settings for: {anchor}",
        f"config file: {settings.config_file or '(none: defaults)'}",
        f"root: {settings.root or os.getcwd()}",
        f"select: {list(settings.select) if settings.select is not None else '(default set)'}",
        f"extend-select: {list(settings.extend_select)}",
        f"ignore: {list(settings.ignore)}",
        f"per-file-ignores: {dict((p, list(c)) for p, c in settings.per_file_ignores)}",
        f"exclude: {list(settings.exclude)}",
        f"extend-exclude: {list(settings.extend_exclude)}",
        f"respect-gitignore: {str(settings.respect_gitignore).lower()}",
        f"force-exclude: {str(settings.force_exclude).lower()}",
        f"unsafe-fixes: {str(settings.unsafe_fixes).lower()}",
        f"preview: {str(settings.preview).lower()}",
        f"cache-dir: {default_cache_dir(settings)}",
        "target-versions:",
        *(f"  {describe(p, settings.target_versions, settings.version_sources)}" for p in TRACKED),
        f"rule options: {json.dumps(settings.rule_options, sort_keys=True) if settings.rule_options else '(defaults)'}",
        "enabled rules:",
    ]
    lines += [f"  {code} {registry.rules[code].name}" for code in codes]
    return "\n".join(lines)


# -- mllint rule ---------------------------------------------------------------------------------

_FIX_TEXT = {"sometimes": "Fix is sometimes available.", "always": "Fix is always available.",
             "none": "Fix is not available."}


def rule_json(rule: Any) -> Dict[str, Any]:
    return {
        "code": rule.code,
        "name": rule.name,
        "summary": rule.summary,
        "severity": rule.severity.value,
        "fix": _FIX_TEXT[rule.fix_availability()],
        "default_enabled": rule.default_enabled,
        "preview": rule.preview,
        "premise": dict(rule.premise),
        "options": [{"name": o.name, "default": o.default, "help": o.help} for o in rule.options],
        "explanation": rule.explanation(),
        "url": rule.url(),
    }


def rule_markdown(rule: Any) -> str:
    lines = [f"# {rule.name} ({rule.code})", "", f"{rule.summary}", "",
             f"Severity: {rule.severity.value}. {_FIX_TEXT[rule.fix_availability()]}"
             + ("" if rule.default_enabled else " Off by default: enable it with `--extend-select`.")]
    if rule.premise:
        lines.append("Premise holds for: " + ", ".join(f"{p} {s}" for p, s in rule.premise.items()) + ".")
    if rule.url():
        lines.append(f"Documentation: {rule.url()}")
    if rule.options:
        lines += ["", "## Options"] + [f"- `{o.name}` (default `{o.default!r}`): {o.help}" for o in rule.options]
    return "\n".join(lines) + "\n\n" + rule.explanation() + "\n"


@cli.command("rule")
@click.argument("code", required=False)
@click.option("--all", "show_all", is_flag=True, help="Explain every rule.")
@click.option("--output-format", type=click.Choice(["text", "json"]), default="text")
def rule_command(code: Optional[str], show_all: bool, output_format: str) -> None:
    """Explain a rule (by code or name), or every rule with --all."""
    registry = default_registry()
    if show_all == bool(code):
        click.echo("mllint: error: give a rule CODE or --all", err=True)
        sys.exit(2)
    if show_all:
        rules = list(registry)
    else:
        rule = registry.get(code or "")
        if rule is None:
            click.echo(f"mllint: error: unknown rule `{code}`", err=True)
            sys.exit(2)
        rules = [rule]
    if output_format == "json":
        data = [rule_json(r) for r in rules]
        click.echo(json.dumps(data if show_all else data[0], indent=2))
    else:
        click.echo("\n".join(rule_markdown(r) for r in rules), nl=False)


@cli.command("server")
def server_command() -> None:
    """Run the language server (LSP over standard input/output) for editors."""
    from mllint.server import INSTALL_HINT, missing_dependency

    missing = missing_dependency()
    if missing is not None:
        click.echo(f"mllint: error: `mllint server` needs {missing}: {INSTALL_HINT}", err=True)
        sys.exit(2)
    from mllint.server.server import run

    run()


def main() -> None:
    try:
        cli(prog_name="mllint")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never a traceback for users; MLLINT_DEBUG=1 shows it
        if os.environ.get("MLLINT_DEBUG"):
            raise
        click.echo(f"mllint: internal error: {type(exc).__name__}: {exc} (please report this bug; "
                   "set MLLINT_DEBUG=1 for a traceback)", err=True)
        sys.exit(2)
