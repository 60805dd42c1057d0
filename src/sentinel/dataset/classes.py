"""One class space by name across sources: normalise, fold aliases, include/exclude, fix the order.

The notebook numbered classes per dataset, so "person" in two datasets became two classes. Here a class
is its normalised name: case and runs of spaces do not matter, and `merge.aliases` folds synonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.config.schema import MergeConfig
from sentinel.errors import ConfigError


def normalise(name: object) -> str:
    """'  Hand  Gun ' → 'hand gun'."""
    return " ".join(str(name).split()).lower()


@dataclass
class ClassMap:
    """Final class names, and per source the final id of each source class id (None = excluded)."""

    names: list[str]
    per_source: dict[str, list[int | None]]
    origins: dict[str, list[str]] = field(default_factory=dict)  # final name → ["source:Original", ...]
    excluded: dict[str, list[str]] = field(default_factory=dict)  # final-name-after-aliases → origins

    def as_report(self) -> dict[str, object]:
        return {
            "names": self.names,
            "origins": self.origins,
            "excluded": self.excluded,
            "per_source": {s: list(ids) for s, ids in self.per_source.items()},
        }


def build_class_map(source_names: dict[str, list[str]], merge: MergeConfig) -> ClassMap:
    """Merge the sources' class lists by name, applying `merge.aliases`, `include`, `exclude`, `classes`."""
    given = {normalise(k): normalise(v) for k, v in merge.aliases.items()}
    aliases = resolve_aliases(given)
    include = {normalise(n) for n in merge.include}
    exclude = {normalise(n) for n in merge.exclude}
    source_classes = {normalise(n) for names in source_names.values() for n in names}
    unknown_aliases = sorted(set(given) - source_classes - set(given.values()))
    if unknown_aliases:
        raise ConfigError(
            "merge.aliases",
            f"{unknown_aliases} are in no selected dataset",
            f"alias names the datasets have: {sorted(source_classes)}",
        )

    def canonical(name: str) -> str:
        return aliases.get(normalise(name), normalise(name))

    origins: dict[str, list[str]] = {}
    for source, names in source_names.items():
        for name in names:
            origins.setdefault(canonical(name), []).append(f"{source}:{name}")

    available = sorted(origins)
    for key, wanted in (("merge.include", include), ("merge.exclude", exclude)):
        unknown = sorted(wanted - set(origins))
        if unknown:
            raise ConfigError(key, f"{unknown} are in no selected dataset", f"choose from {available}")

    kept = [n for n in available if n not in exclude and (not include or n in include)]
    final = _ordered(kept, [normalise(n) for n in merge.classes], available)
    if not final:
        raise ConfigError("merge.include", "no class is left after include/exclude", f"choose from {available}")
    index = {name: i for i, name in enumerate(final)}
    per_source = {s: [index.get(canonical(n)) for n in names] for s, names in source_names.items()}
    return ClassMap(
        names=final,
        per_source=per_source,
        origins={n: origins[n] for n in final},
        excluded={n: origins[n] for n in available if n not in index},
    )


def resolve_aliases(aliases: dict[str, str]) -> dict[str, str]:
    """Follow chains to their end (knife → blade → weapon: knife → weapon); a cycle is an error.

    One step only would leave knife as `blade`, and {gun: knife, knife: gun} would silently swap classes.
    """
    resolved = {}
    for start in aliases:
        path, name = [start], aliases[start]
        while name in aliases and name != path[-1]:
            if name in path:
                cycle = " → ".join([*path[path.index(name) :], name])
                raise ConfigError("merge.aliases", f"the aliases form a cycle ({cycle})", "make each chain end")
            path.append(name)
            name = aliases[name]
        resolved[start] = name
    return {k: v for k, v in resolved.items() if k != v}


def _ordered(kept: list[str], explicit: list[str], available: list[str]) -> list[str]:
    """Alphabetical unless `merge.classes` gives the order; then it must name exactly the kept classes."""
    if not explicit:
        return kept
    unknown = [n for n in explicit if n not in available]
    if unknown:
        raise ConfigError("merge.classes", f"{unknown} are in no selected dataset", f"choose from {available}")
    missing = [n for n in kept if n not in explicit]
    if missing:
        raise ConfigError("merge.classes", f"does not list {missing}", "add them, or drop them with merge.exclude")
    return [n for n in explicit if n in kept]
