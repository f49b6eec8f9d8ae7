"""Plugin manager: built-ins plus ``pdcore`` entry points, selected by name.

Rules (ARCHITECTURE.md §2): entry points are loaded once per process; a plugin
whose import or hook fails is recorded and skipped, never fatal; a third party
registering a name the core or a first-party plugin provides is a conflict the
owner wins (the third party's entry is ignored, and said so); two other
providers of one name are a conflict that makes the name unusable, reported
with both distributions; every conflict and failure is listed by ``warnings()``
(logged at server start, shown by ``pdcore plugins``) and by any error that
lists backends to choose from; an unknown name
lists what is installed ("Choose one of: ...") and, for first-party names, the
``pip install 'pdcore[...]'`` that provides it. ``PDCORE_PLUGINS`` (allow-list)
and ``PDCORE_DISABLE_PLUGINS`` (block-list) filter entry points by entry-point or
distribution name. Discovery never calls factories or availability checks, so
no heavy library (torch_npu, flashinfer, mooncake, nixl) is imported by it.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from pdcore import __version__
from pdcore.attention.base import AttentionBackend
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.errors import (
    BackendUnavailableError,
    ConfigError,
    DuplicateBackendError,
    PluginError,
    UnknownBackendError,
)
from pdcore.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, Availability, PdcoreSpecs
from pdcore.platform import Platform
from pdcore.plugin_options import OptionRecorder, apply_env_defaults, check_plain, flag_of

ALLOW_ENV = "PDCORE_PLUGINS"
BLOCK_ENV = "PDCORE_DISABLE_PLUGINS"
BUILTIN = "builtin"

# kind -> (hook name, registration type)
KINDS: dict[str, tuple[str, type]] = {
    "platform": ("pdcore_platforms", Platform),
    "attention": ("pdcore_attention_backends", AttentionBackend),
    "transfer": ("pdcore_transfer_backends", TransferBackend),
}

# (kind, name) of first-party backends -> (distribution, extra that installs it)
FIRST_PARTY: dict[tuple[str, str], tuple[str, str]] = {
    ("platform", "cuda"): ("pdcore-cuda", "cuda"),
    ("attention", "flashinfer"): ("pdcore-cuda", "cuda"),
    ("attention", "triton"): ("pdcore-cuda", "cuda"),
    ("platform", "npu"): ("pdcore-ascend", "ascend"),
    ("attention", "ascend"): ("pdcore-ascend", "ascend"),
    ("transfer", "mooncake"): ("pdcore-transfer-mooncake", "mooncake"),
    ("transfer", "nixl"): ("pdcore-transfer-nixl", "nixl"),
    ("transfer", "ascend"): ("pdcore-transfer-ascend", "ascend-transfer"),
}

# distributions whose names third parties cannot take (besides the built-ins)
FIRST_PARTY_DISTRIBUTIONS = frozenset(dist for dist, _ in FIRST_PARTY.values())

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Provider:
    """Who registered something: entry-point name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"

    @property
    def key(self) -> str:
        """The plugin's key in ``ServerArgs.plugin_options``: ``distribution:entry point``."""
        return BUILTIN if self.plugin == BUILTIN else f"{self.distribution}:{self.plugin}"

    @property
    def owns_names(self) -> bool:
        """The core's built-ins and first-party plugins keep their names against third parties."""
        return self.plugin == BUILTIN or self.distribution in FIRST_PARTY_DISTRIBUTIONS

    def label(self) -> str:
        """``pdcore 0.1 (built-in)``, ``pdcore-cuda 0.1 (first-party)``, or plain."""
        if self.plugin == BUILTIN:
            return f"{self} (built-in)"
        return f"{self} (first-party)" if self.owns_names else str(self)


@dataclass(frozen=True)
class Registered:
    kind: str
    name: str
    spec: Any
    provider: Provider


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that was skipped (filtered) or failed (import or hook error)."""

    provider: Provider
    stage: str  # "skipped", "load", or the hook that failed
    message: str


@dataclass(frozen=True)
class NameClash:
    """A third party registered a name a built-in or first-party plugin owns:
    ``kept`` keeps the name, ``ignored`` is not registered."""

    kept: Registered
    ignored: Registered

    def __str__(self) -> str:
        k, i = self.kept, self.ignored
        fix = "rename it in that plugin"
        if k.provider.plugin != BUILTIN:
            fix += f", or disable the other with {BLOCK_ENV}={k.provider.distribution}"
        return (
            f"{k.kind} backend {k.name!r}: CONFLICT between {k.provider.label()} and "
            f"{i.provider}; {i.provider.distribution}'s {k.name!r} is ignored ({fix})"
        )


@dataclass
class Registry:
    """All registered backends of one process; build with ``Registry.discover()``."""

    entries: dict[str, dict[str, list[Registered]]] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    clashes: list[NameClash] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None
    # plugin key -> the flags its pdcore_add_cli_args added (see pdcore.plugin_options)
    declared_options: dict[str, list[argparse.Action]] = field(default_factory=dict)
    _availability: dict[tuple[str, str, str], Availability] = field(default_factory=dict)

    # ---- discovery -----------------------------------------------------------

    @classmethod
    def discover(
        cls,
        entry_points: Iterable[md.EntryPoint] | None = None,
        env: Mapping[str, str] | None = None,
        builtins: bool = True,
    ) -> Registry:
        env = os.environ if env is None else env
        reg = cls(entries={k: {} for k in KINDS})
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(PdcoreSpecs)
        reg.plugin_manager = pm
        providers: dict[str, Provider] = {}
        if builtins:
            from pdcore import builtin

            pm.register(builtin, name=BUILTIN)
            providers[BUILTIN] = Provider(BUILTIN, "pdcore", __version__)
        if entry_points is None:
            entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
        allow, block = _name_set(env.get(ALLOW_ENV)), _name_set(env.get(BLOCK_ENV))
        seen: set[tuple[str, str, str]] = set()
        for ep in entry_points:
            provider = _provider_of(ep)
            key = (provider.distribution, ep.name, ep.value)
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            names = {ep.name, provider.distribution}
            if allow is not None and not names & allow:
                reg.problems.append(PluginProblem(provider, "skipped", f"not in {ALLOW_ENV}"))
                continue
            if block and names & block:
                reg.problems.append(PluginProblem(provider, "skipped", f"listed in {BLOCK_ENV}"))
                continue
            reg_name = f"{provider.distribution}:{ep.name}"
            try:
                module = ep.load()
                pm.register(module, name=reg_name)
            except Exception as e:  # a broken plugin must not take the core down
                reg.problems.append(PluginProblem(provider, "load", _describe(e)))
                continue
            providers[reg_name] = provider
        for kind, (hook_name, spec_type) in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                provider = providers[impl.plugin_name]
                try:
                    items = impl.function()
                    reg._add(kind, spec_type, items, provider)
                except Exception as e:
                    reg.problems.append(PluginProblem(provider, hook_name, _describe(e)))
        reg._settle_owned_names()
        return reg

    def _settle_owned_names(self) -> None:
        """Where an owner (built-in, first-party) and third parties register one
        name, the owner keeps it and each third party's entry becomes a clash."""
        for by_name in self.entries.values():
            for name, regs in by_name.items():
                owners = [r for r in regs if r.provider.owns_names]
                if owners and len(owners) < len(regs):
                    by_name[name] = owners
                    self.clashes += [NameClash(owners[0], r) for r in regs if r not in owners]

    def _add(self, kind: str, spec_type: type, items: Any, provider: Provider) -> None:
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"must return a list of {spec_type.__name__}, got {type(items)}")
        for item in items:
            if not isinstance(item, spec_type):
                raise TypeError(f"must return {spec_type.__name__} objects, got {item!r}")
            if not isinstance(item.name, str) or not _NAME_RE.match(item.name):
                raise ValueError(f"invalid {kind} name {item.name!r} (use [a-z0-9_.-])")
        for item in items:
            self.entries[kind].setdefault(item.name, []).append(
                Registered(kind, item.name, item, provider)
            )

    # ---- lookup --------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all(self, kind: str | None = None) -> list[Registered]:
        kinds = [kind] if kind else list(KINDS)
        return [r for k in kinds for n in sorted(self.entries[k]) for r in self.entries[k][n]]

    def lookup(self, kind: str, name: str) -> Registered:
        """The single registration of ``name``; raises Unknown/DuplicateBackendError."""
        found = self.entries[kind].get(name)
        if not found:
            raise UnknownBackendError(self._unknown_message(kind, name))
        if len(found) > 1:
            dists = " and ".join(str(r.provider) for r in found)
            raise DuplicateBackendError(
                f"{kind} backend {name!r} is provided by both {dists}; "
                f"uninstall one, or exclude one with {BLOCK_ENV}="
                f"{found[-1].provider.distribution}"
            )
        return found[0]

    def get(self, kind: str, name: str) -> Any:
        return self.lookup(kind, name).spec

    def conflicts(self) -> dict[tuple[str, str], list[Registered]]:
        """Names still registered by several providers once owners have won (see
        ``clashes``): none of them is used until one goes."""
        return {(k, n): regs for k in KINDS for n, regs in self.entries[k].items() if len(regs) > 1}

    def failures(self) -> list[PluginProblem]:
        """Plugins that failed to import, or whose hook raised or returned bad objects."""
        return [p for p in self.problems if p.stage != "skipped"]

    def warnings(self) -> list[str]:
        """One line per failed plugin and per name conflict: what a user must fix.
        Filtered (skipped) plugins are the user's choice and not listed."""
        lines = [_failure_line(p) for p in self.failures()]
        lines += [str(c) for c in self.clashes]
        lines += [_conflict_line(regs) for regs in self.conflicts().values()]
        return lines

    def _not_usable(self, kind: str) -> str:
        """``. Not usable: ...`` (conflicts of ``kind``, failed plugins) for an error
        that found nothing to choose, or ``""``."""
        lines = [str(c) for c in self.clashes if c.kept.kind == kind]
        lines += [_conflict_line(r) for (k, _), r in self.conflicts().items() if k == kind]
        lines += [_failure_line(p) for p in self.failures()]
        return f". Not usable: {'; '.join(lines)}" if lines else ""

    def _unknown_message(self, kind: str, name: str) -> str:
        choices = ", ".join(self.names(kind)) or "(none installed)"
        msg = f"Unknown {kind} backend {name!r}. Choose one of: {choices}."
        dist_extra = FIRST_PARTY.get((kind, name))
        related = [
            p for p in self.problems if dist_extra and p.provider.distribution == dist_extra[0]
        ]
        if related:
            p = related[0]
            why = "was skipped" if p.stage == "skipped" else "failed to load"
            msg += f" It is provided by {p.provider.distribution}, which {why}: {p.message}."
        elif dist_extra:
            dist, extra = dist_extra
            if _installed(dist):
                msg += f" {dist} is installed but does not provide it."
            else:
                msg += (
                    f" It is provided by {dist}, which is not installed: "
                    f"pip install 'pdcore[{extra}]'"
                )
        others = [p for p in self.problems if p not in related]
        if others:
            listed = "; ".join(f"{p.provider} ({p.message})" for p in others)
            msg += f" Plugins not loaded: {listed}."
        clashes = [str(c) for c in self.clashes if c.kept.kind == kind]
        if clashes:
            msg += f" Also: {'; '.join(clashes)}."
        return msg

    # ---- availability --------------------------------------------------------

    def availability(self, reg: Registered) -> Availability:
        """Whether a registered backend can run here (cached; never raises)."""
        key = (reg.kind, reg.name, reg.provider.distribution)
        if key not in self._availability:
            self._availability[key] = self._check(reg)
        return self._availability[key]

    def _check(self, reg: Registered) -> Availability:
        try:
            if reg.kind == "platform":
                result = reg.spec.availability()
            else:
                result = reg.spec.check()
        except Exception as e:
            return Availability.no(f"availability check raised {_describe(e)}")
        if not isinstance(result, Availability):
            return Availability.no(f"availability check returned {result!r}")
        if result.ok and reg.kind == "attention":
            platforms = [self.entries["platform"].get(p) for p in reg.spec.platforms]
            usable = [p[0] for p in platforms if p and self.availability(p[0]).ok]
            if not usable:
                wanted = ", ".join(reg.spec.platforms)
                return Availability.no(f"needs platform {wanted}; none is available here")
        return result

    def require(self, kind: str, name: str, flag: str | None = None) -> Any:
        """Look up ``name`` and insist it is available; errors name ``flag``."""
        try:
            reg = self.lookup(kind, name)
        except PluginError as e:
            if flag:
                raise ConfigError(flag, str(e)) from e
            raise
        avail = self.availability(reg)
        if not avail.ok:
            msg = f"{kind} backend {name!r} ({reg.provider}) is not available: {avail.reason}"
            if flag:
                raise ConfigError(flag, msg)
            raise BackendUnavailableError(msg)
        return reg.spec

    def select_platform(self, name: str = "auto", flag: str = "--device") -> Platform:
        """``auto``: the available platform with the highest priority."""
        if name != "auto":
            return self.require("platform", name, flag)
        candidates = [r for r in self.all("platform") if len(self.entries["platform"][r.name]) == 1]
        candidates = [r for r in candidates if self.availability(r).ok]
        if not candidates:
            raise ConfigError(
                flag, "no platform is available (not even cpu)" + self._not_usable("platform")
            )
        return max(candidates, key=_preference).spec

    def select_attention(
        self,
        name: str | None,
        platform: Platform,
        flag: str = "--attention-backend",
        kind: str | None = None,
        phase: str | None = None,
        dtype: str | None = None,
        head_dim: int | None = None,
    ) -> AttentionBackend:
        """An explicit backend must run on ``platform``; ``None`` picks the best one.

        ``kind``: the KV layout the model needs ("mha" or "mla"): an explicit
        backend of another kind is an error, and the default is the best of that
        kind (None: no model known yet; checks nothing, defaults to an MHA one).
        ``phase``: "prefill" or "decode" picks the default for those passes
        (``AttentionBackend.priority_for``). ``dtype``/``head_dim``, where known:
        an explicit backend that refuses them is an error, the default skips it.
        """
        if name:
            spec = self.require("attention", name, flag)
            if platform.name not in spec.platforms:
                raise ConfigError(
                    flag,
                    f"attention backend {name!r} does not run on platform "
                    f"{platform.name!r} (it supports: {', '.join(spec.platforms)})"
                    + self._clash_note("attention", name),
                )
            if kind is not None and spec.kv_layout.kind != kind:
                fits = self._attention_names(platform, kind)
                raise ConfigError(
                    flag,
                    f"attention backend {name!r} is for {spec.kv_layout.kind.upper()} KV caches "
                    f"but this model needs {kind.upper()}; choose one of: {fits or 'none here'}",
                )
            why = spec.refuses(dtype, head_dim)
            if why:
                raise ConfigError(flag, f"attention backend {name!r} {why}")
            return spec
        want = kind or "mha"
        candidates = [
            r
            for r in self.all("attention")
            if platform.name in r.spec.platforms
            and r.spec.kv_layout.kind == want
            and len(self.entries["attention"][r.name]) == 1
            and self.availability(r).ok
            and not r.spec.refuses(dtype, head_dim)
        ]
        if not candidates:
            raise ConfigError(
                flag,
                f"no {want.upper()} attention backend available for {platform.name!r}"
                + self._not_usable("attention"),
            )
        return max(candidates, key=lambda r: _preference(r, phase)).spec

    def select_attention_phases(
        self,
        platform: Platform,
        attention: str | None = None,
        prefill: str | None = None,
        decode: str | None = None,
        kind: str | None = None,
        dtype: str | None = None,
        head_dim: int | None = None,
    ) -> tuple[AttentionBackend, AttentionBackend]:
        """``(prefill, decode)`` backends. ``prefill``/``decode`` (SGLang's
        ``--prefill-attention-backend``/``--decode-attention-backend``) override
        ``attention`` for their passes; a phase given neither gets the best backend
        for that phase. Both use one KV pool, so their layouts must agree."""
        chosen = []
        for phase, name in (("prefill", prefill), ("decode", decode)):
            flag = f"--{phase}-attention-backend" if name else "--attention-backend"
            chosen.append(
                self.select_attention(
                    name or attention, platform, flag, kind, phase, dtype, head_dim
                )
            )
        first, second = chosen
        a, b = first.kv_layout, second.kv_layout
        if (a.kind, a.cache_layout) != (b.kind, b.cache_layout):
            raise ConfigError(
                "--decode-attention-backend" if decode else "--prefill-attention-backend",
                f"prefill and decode attention share one KV pool, but {first.name!r} keeps "
                f"{a.kind.upper()} {a.cache_layout} and {second.name!r} {b.kind.upper()} "
                f"{b.cache_layout}",
            )
        return first, second

    def _clash_note(self, kind: str, name: str) -> str:
        clashes = [str(c) for c in self.clashes if (c.kept.kind, c.kept.name) == (kind, name)]
        return f". Note: {'; '.join(clashes)}" if clashes else ""

    def _attention_names(self, platform: Platform, kind: str) -> str:
        return ", ".join(
            r.name
            for r in self.all("attention")
            if platform.name in r.spec.platforms and r.spec.kv_layout.kind == kind
        )

    # ---- optional hooks ------------------------------------------------------

    def add_cli_args(self, parser: argparse.ArgumentParser) -> None:
        """Let each plugin add flags, recording them as that plugin's options
        (``plugin_options``); a failing plugin is recorded, not fatal."""
        for impl in self._impls("pdcore_add_cli_args"):
            actions = self.declared_options[impl.plugin_name] = []  # the latest parser's
            try:
                impl.function(parser=OptionRecorder(parser, actions))
            except Exception as e:
                problem = PluginProblem(self._provider(impl), "pdcore_add_cli_args", _describe(e))
                if problem not in self.problems:  # one parser per call; report once
                    self.problems.append(problem)

    def apply_env_defaults(self, env: Mapping[str, str] | None = None) -> None:
        """Plugin flags not given take ``PDCORE_<FLAG>`` / ``SGLANG_<FLAG>`` (after
        ``add_cli_args``, before parsing); a bad value is a ``ConfigError``."""
        env = os.environ if env is None else env
        for actions in self.declared_options.values():
            apply_env_defaults(actions, env)

    def configure(self, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
        """Run plugins' ``pdcore_configure``; ``ConfigError`` propagates as a flag error.

        Returns each plugin's options (its declared flags' values from ``args``,
        updated by the mapping its ``pdcore_configure`` returns, if any), keyed by
        plugin: the value of ``ServerArgs.plugin_options``.
        """
        options = {
            plugin: {a.dest: getattr(args, a.dest, a.default) for a in actions}
            for plugin, actions in self.declared_options.items()
            if actions
        }
        for impl in self._impls("pdcore_configure"):
            try:
                result = impl.function(args=args)
            except ConfigError:
                raise
            except Exception as e:
                raise PluginError(
                    f"plugin {self._provider(impl)} failed in pdcore_configure: {_describe(e)}"
                ) from e
            if result is not None:
                options[impl.plugin_name] = self._configured(impl, options, result)
        flags = {a.dest: flag_of(a) for acts in self.declared_options.values() for a in acts}
        return {
            plugin: {k: check_plain(flags.get(k, k), v) for k, v in values.items()}
            for plugin, values in options.items()
        }

    def _configured(self, impl, options: dict, result: Any) -> dict[str, Any]:
        """A plugin's options updated by what its ``pdcore_configure`` returned."""
        if impl.plugin_name not in self.declared_options:
            # add_cli_args never ran on this registry (a caller that parsed flags
            # itself): nothing declared to check against, take the mapping as it is.
            if isinstance(result, Mapping):
                return {**options.get(impl.plugin_name, {}), **result}
        declared = {a.dest for a in self.declared_options.get(impl.plugin_name, [])}
        if not isinstance(result, Mapping) or not set(result) <= declared:
            raise PluginError(
                f"plugin {self._provider(impl)}: pdcore_configure must return None or a "
                f"mapping of its own options ({', '.join(sorted(declared)) or 'none declared'}), "
                f"got {result!r}"
            )
        return {**options.get(impl.plugin_name, {}), **result}

    def options_for(
        self, kind: str, name: str, plugin_options: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        """The options of the plugin that provides backend ``name`` (a copy; empty
        when it declared none): what its factory or platform receives."""
        return dict(plugin_options.get(self.lookup(kind, name).provider.key, {}))

    def _impls(self, hook_name: str):
        return getattr(self.plugin_manager.hook, hook_name).get_hookimpls()

    def _provider(self, impl) -> Provider:
        name = impl.plugin_name
        if name == BUILTIN:
            return Provider(BUILTIN, "pdcore", __version__)
        dist, _, ep = name.partition(":")
        version = _installed(dist) or "?"
        return Provider(ep, dist, version)


def _conflict_line(regs: list[Registered]) -> str:
    dists = " and ".join(str(r.provider) for r in regs)
    return f"{regs[0].kind} backend {regs[0].name!r}: CONFLICT between {dists}; neither is used"


def _failure_line(p: PluginProblem) -> str:
    where = "failed to load" if p.stage == "load" else f"failed in {p.stage}"
    return f"plugin {p.provider} (entry point {p.provider.plugin!r}) {where}: {p.message}"


def _preference(reg: Registered, phase: str | None = None) -> tuple:
    """Higher priority wins; on a tie the core's own backend, then the first name."""
    priority = reg.spec.priority_for(phase) if phase else reg.spec.priority
    return (priority, reg.provider.plugin == BUILTIN, [-ord(c) for c in reg.name])


def _name_set(value: str | None) -> set[str] | None:
    if value is None or not value.strip():
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _provider_of(ep: md.EntryPoint) -> Provider:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Provider(ep.name, f"<unknown distribution of {ep.value}>", "?")
    return Provider(ep.name, dist.metadata["Name"], dist.version)


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry; entry points are loaded on first use only."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry.discover()
        return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin)."""
    global _registry
    with _lock:
        _registry = None
