"""Prices and cost: a dated price catalog, and the exact cost of one normalized Usage.

Money is integer nano-USD (1e-9 USD) from end to end; nothing here touches a float.

The catalog
    Prices are kept per (provider, upstream model) as a list of versions, each with the
    moment it takes effect (UTC), its source, and a unit price per token class in nano-USD
    per million tokens. A request is priced by the version in effect at the request's time,
    so a price change never rewrites the cost of earlier requests. The package ships a
    catalog keyed by provider kind (service/billing/prices.toml); operators override and add
    entries in config ([[prices]] tables of the same shape), keyed by a configured provider
    name or a kind. For a request, the first of these that has a version in effect wins:
    operator entries for the provider's configured name, operator entries for its kind,
    shipped entries for its kind. A provider kind the shipped catalog does not list (a
    generic self-hosted server, say) is unpriced until an operator adds its prices.

Prices a version does not list
    - image, audio, video, document and unattributed input: the input text price;
    - cache writes with an unknown TTL: the 5-minute cache write price where the entry has
      one, else the input text price;
    - audio, image, reasoning and unattributed output: the output text price;
    - cache reads, 5-minute and 1-hour cache writes: no default. Tokens of such a class
      under an entry with no price for it leave the response unpriced.

Long-context tiers
    A version may carry tiers (`above_input_tokens`): when a request's input.total exceeds
    a tier's threshold, that tier's prices apply to the whole request, every token class.
    A tier lists its own prices in full; the defaults above apply within the tier.

Rounding
    One rule, per line item: amount = (tokens * unit_price_per_million + 500_000) // 1_000_000,
    that is tokens x price rounded half up to a whole nano-USD. The total is the exact sum of
    the line items. Only token classes with tokens get a line item.

Unpriced
    A response is unpriced, never $0, when no version is in effect for its provider and model
    at its time, when it has tokens of a class its version gives no price, when its usage is
    not a consistent breakdown (a negative bucket, buckets that do not add up to their total,
    a figure the provider stated that is not a token count and so is in no bucket),
    or when usage billed to another model in the same response cannot be priced. The cost
    then has no line items, a total of 0, and `unpriced_reason` says why. A cost the provider
    reported itself is copied beside Tollway's figure either way.
"""

from __future__ import annotations

import bisect
import functools
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from importlib import resources
from typing import Any, TypeGuard

from tollway.v1 import completion_pb2 as pb

TC = pb.TokenClass

INT64_MAX = (1 << 63) - 1
DEFAULT_OPERATOR_SOURCE = "operator configuration"

# Config key of each token class: its enum name without the prefix, lower case
# ("input_text", "cache_write_1h", ...), so the file format and the proto cannot drift apart.
CLASS_KEYS: dict[int, str] = {
    number: name.removeprefix("TOKEN_CLASS_").lower()
    for name, number in TC.items()
    if number != TC.TOKEN_CLASS_UNSPECIFIED
}
KEY_CLASSES = {key: number for number, key in CLASS_KEYS.items()}
REQUIRED_KEYS = ("input_text", "output_text")

# Where a price a version does not list comes from (a chain, tried in order).
_DEFAULTS: dict[int, tuple[int, ...]] = {
    TC.TOKEN_CLASS_INPUT_IMAGE: (TC.TOKEN_CLASS_INPUT_TEXT,),
    TC.TOKEN_CLASS_INPUT_AUDIO: (TC.TOKEN_CLASS_INPUT_TEXT,),
    TC.TOKEN_CLASS_INPUT_VIDEO: (TC.TOKEN_CLASS_INPUT_TEXT,),
    TC.TOKEN_CLASS_INPUT_DOCUMENT: (TC.TOKEN_CLASS_INPUT_TEXT,),
    TC.TOKEN_CLASS_INPUT_UNATTRIBUTED: (TC.TOKEN_CLASS_INPUT_TEXT,),
    TC.TOKEN_CLASS_CACHE_WRITE_UNKNOWN_TTL: (TC.TOKEN_CLASS_CACHE_WRITE_5M, TC.TOKEN_CLASS_INPUT_TEXT),
    TC.TOKEN_CLASS_OUTPUT_AUDIO: (TC.TOKEN_CLASS_OUTPUT_TEXT,),
    TC.TOKEN_CLASS_OUTPUT_IMAGE: (TC.TOKEN_CLASS_OUTPUT_TEXT,),
    TC.TOKEN_CLASS_OUTPUT_REASONING: (TC.TOKEN_CLASS_OUTPUT_TEXT,),
    TC.TOKEN_CLASS_OUTPUT_UNATTRIBUTED: (TC.TOKEN_CLASS_OUTPUT_TEXT,),
}

# The usage bucket behind each token class, in line-item order (the enum's order).
_BUCKETS: tuple[tuple[pb.TokenClass, Callable[[pb.Usage], int]], ...] = (
    (TC.TOKEN_CLASS_INPUT_TEXT, lambda u: u.input.text),
    (TC.TOKEN_CLASS_INPUT_IMAGE, lambda u: u.input.image),
    (TC.TOKEN_CLASS_INPUT_AUDIO, lambda u: u.input.audio),
    (TC.TOKEN_CLASS_INPUT_VIDEO, lambda u: u.input.video),
    (TC.TOKEN_CLASS_INPUT_DOCUMENT, lambda u: u.input.document),
    (TC.TOKEN_CLASS_INPUT_UNATTRIBUTED, lambda u: u.input.unattributed),
    (TC.TOKEN_CLASS_CACHE_READ, lambda u: u.input.cache_read),
    (TC.TOKEN_CLASS_CACHE_WRITE_5M, lambda u: u.input.cache_write_5m),
    (TC.TOKEN_CLASS_CACHE_WRITE_1H, lambda u: u.input.cache_write_1h),
    (TC.TOKEN_CLASS_CACHE_WRITE_UNKNOWN_TTL, lambda u: u.input.cache_write_unknown_ttl),
    (TC.TOKEN_CLASS_OUTPUT_TEXT, lambda u: u.output.text),
    (TC.TOKEN_CLASS_OUTPUT_AUDIO, lambda u: u.output.audio),
    (TC.TOKEN_CLASS_OUTPUT_IMAGE, lambda u: u.output.image),
    (TC.TOKEN_CLASS_OUTPUT_REASONING, lambda u: u.output.reasoning),
    (TC.TOKEN_CLASS_OUTPUT_UNATTRIBUTED, lambda u: u.output.unattributed),
)
_INPUT_CLASSES = frozenset(c for c in CLASS_KEYS if c < TC.TOKEN_CLASS_OUTPUT_TEXT)


class PriceCatalogError(ValueError):
    """A price entry that cannot be used; the message names the entry and the key."""


def line_amount(tokens: int, unit_price_per_million: int) -> int:
    """tokens x unit price per million tokens, rounded half up to a whole nano-USD."""
    return (tokens * unit_price_per_million + 500_000) // 1_000_000


@dataclass(frozen=True)
class UnitPrices:
    """A unit price (nano-USD per million tokens) for every token class, None where none applies."""

    by_class: Mapping[int, int | None]

    @classmethod
    def resolve(cls, listed: Mapping[int, int]) -> UnitPrices:
        resolved: dict[int, int | None] = {}
        for token_class in CLASS_KEYS:
            price = listed.get(token_class)
            for fallback in _DEFAULTS.get(token_class, ()):
                if price is not None:
                    break
                price = listed.get(fallback)
            resolved[token_class] = price
        return cls(resolved)

    def __getitem__(self, token_class: int) -> int | None:
        return self.by_class[token_class]


@dataclass(frozen=True)
class Tier:
    """Prices for a whole request whose input.total exceeds above_input_tokens."""

    above_input_tokens: int
    prices: UnitPrices


@dataclass(frozen=True)
class PriceVersion:
    """One dated price list for a provider's model (and the other names it answers to)."""

    provider: str
    model: str
    aliases: tuple[str, ...]
    effective_from: datetime
    source: str
    prices: UnitPrices
    # Ascending by threshold.
    tiers: tuple[Tier, ...] = ()

    def select(self, input_total: int) -> tuple[UnitPrices, Tier | None]:
        """The prices for a request of input_total input tokens: the highest tier it exceeds."""
        chosen: Tier | None = None
        for tier in self.tiers:
            if input_total > tier.above_input_tokens:
                chosen = tier
        return (chosen.prices if chosen else self.prices), chosen

    def label(self, tier: Tier | None = None) -> str:
        """`provider/model@effective`, plus `[input>N]` when a long-context tier applied."""
        text = f"{self.provider}/{self.model}@{_moment_text(self.effective_from)}"
        if tier is not None:
            text += f"[input>{tier.above_input_tokens}]"
        return text


_Layer = Mapping[tuple[str, str], tuple[PriceVersion, ...]]


class PriceCatalog:
    """Shipped and operator price versions; immutable, read by the request path."""

    def __init__(self, shipped: Iterable[PriceVersion] = (), operator: Iterable[PriceVersion] = ()):
        self._shipped = _index(shipped, replace=False)
        # Later operator versions replace earlier ones for the same name and moment.
        self._operator = _index(operator, replace=True)

    @classmethod
    def load_default(cls) -> PriceCatalog:
        """The catalog that ships with the package (service/billing/prices.toml)."""
        return _default_catalog()

    @classmethod
    def from_toml(cls, text: str, origin: str) -> PriceCatalog:
        """A catalog of shipped entries from TOML text holding [[prices]] tables."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceCatalogError(f"{origin} is not valid TOML: {exc}") from None
        unknown = set(raw) - {"prices"}
        if unknown:
            raise PriceCatalogError(f"{origin}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        return cls(shipped=parse_entries(raw.get("prices", []), origin, require_source=True))

    def with_overrides(self, entries: Iterable[Mapping[str, Any]], origin: str = "config") -> PriceCatalog:
        """A new catalog with operator entries ([[prices]] tables from config) added.

        An operator version with the same provider, model and effective_from as an earlier
        operator version replaces it; operator versions win over shipped ones (see the module
        docstring for the lookup order).
        """
        added = parse_entries(entries, origin, require_source=False)
        return PriceCatalog(shipped=_versions(self._shipped), operator=_versions(self._operator) + added)

    def find(self, provider: str, model: str, at: datetime, kind: str | None = None) -> PriceVersion | None:
        """The version in effect at `at` for a configured provider (and its kind) and model."""
        moment = _utc_instant(at)
        kind = kind or provider
        lookups = [(self._operator, provider), (self._shipped, kind)]
        if kind != provider:
            lookups.insert(1, (self._operator, kind))
        for layer, key in lookups:
            version = _in_effect(layer.get((key, model), ()), moment)
            if version is not None:
                return version
        return None

    def price(self, usage: pb.Usage, provider: str, model: str, at: datetime,
              kind: str | None = None) -> pb.Cost:
        """The cost of `usage` by the prices in effect at `at` (a timezone-aware datetime).

        `provider` is the configured provider name and `kind` its adapter kind (the name when
        omitted). Usage billed to other models in the same response is priced under the same
        provider and added as further line items.
        """
        moment = _utc_instant(at)
        cost = pb.Cost()
        reported = usage.provider_reported
        if reported.HasField("cost_nano_usd"):
            cost.provider_reported_nano_usd = reported.cost_nano_usd
        items: list[pb.CostLineItem] = []
        labels: list[str] = []
        try:
            self._price_into(usage, provider, kind, model, moment, items, labels)
            total = sum(item.amount_nano_usd for item in items)
            if total > INT64_MAX:
                raise _Unpriced(f"the cost of this {model} response exceeds the int64 range of nano-USD")
        except _Unpriced as unpriced:
            cost.unpriced = True
            cost.unpriced_reason = str(unpriced)
            cost.price_entry = ", ".join(labels)
            return cost
        cost.line_items.extend(items)
        cost.total_nano_usd = total
        cost.price_entry = ", ".join(labels)
        return cost

    def _price_into(self, usage: pb.Usage, provider: str, kind: str | None, model: str,
                    moment: datetime, items: list[pb.CostLineItem], labels: list[str]) -> None:
        counts = [(token_class, bucket(usage)) for token_class, bucket in _BUCKETS]
        _check_breakdown(usage, counts, model)
        version = self.find(provider, model, moment, kind)
        if version is None:
            raise _Unpriced(f"no price for {provider}/{model}{_kind_note(provider, kind)} "
                            f"at {_moment_text(moment)}")
        prices, tier = version.select(usage.input.total)
        label = version.label(tier)
        labels.append(label)
        for token_class, tokens in counts:
            if tokens == 0:
                continue
            unit = prices[token_class]
            if unit is None:
                raise _Unpriced(f"no price for {CLASS_KEYS[token_class]} tokens under {label}")
            amount = line_amount(tokens, unit)
            if amount > INT64_MAX:
                raise _Unpriced(f"the cost of {CLASS_KEYS[token_class]} tokens under {label} "
                                f"exceeds the int64 range of nano-USD")
            items.append(pb.CostLineItem(token_class=token_class, tokens=tokens,
                                         unit_price_nano_usd_per_million=unit, amount_nano_usd=amount,
                                         model=model))
        for other in usage.other_models:
            self._price_into(other.usage, provider, kind, other.model, moment, items, labels)


class _Unpriced(Exception):
    """Why a response cannot be priced; becomes Cost.unpriced_reason."""


def parse_entries(entries: Iterable[Mapping[str, Any]], origin: str, *,
                  require_source: bool) -> list[PriceVersion]:
    """[[prices]] tables -> versions, each checked; errors name the entry and the key."""
    if not isinstance(entries, Iterable) or isinstance(entries, (str, bytes, Mapping)):
        raise PriceCatalogError(f"{origin}: prices must be a list of tables ([[prices]])")
    versions = []
    for index, entry in enumerate(entries):
        where = f"{origin}: prices[{index}]"
        if not isinstance(entry, Mapping):
            raise PriceCatalogError(f"{where} must be a table")
        versions.append(_parse_entry(entry, where, require_source))
    _index(versions, replace=False)  # two versions of one model at one moment: refused here
    return versions


_ENTRY_KEYS = {"provider", "model", "aliases", "effective_from", "source", "tiers"}


def _parse_entry(entry: Mapping[str, Any], where: str, require_source: bool) -> PriceVersion:
    provider = _name(entry, "provider", where)
    model = _name(entry, "model", where)
    where = f"{where} ({provider}/{model})"
    unknown = set(entry) - _ENTRY_KEYS - set(KEY_CLASSES)
    if unknown:
        raise PriceCatalogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                f"prices are one of {', '.join(KEY_CLASSES)}")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise PriceCatalogError(f"{where}: aliases must be a list of model names")
    if "effective_from" not in entry:
        raise PriceCatalogError(f"{where}: effective_from is required (a date or a UTC time)")
    effective_from = _effective_from(entry["effective_from"], where)
    source = entry.get("source")
    if source is None and not require_source:
        source = DEFAULT_OPERATOR_SOURCE
    if not isinstance(source, str) or not source.strip():
        raise PriceCatalogError(f"{where}: source is required (the URL or document the prices come from)")
    tiers_raw = entry.get("tiers", [])
    if not isinstance(tiers_raw, list):
        raise PriceCatalogError(f"{where}: tiers must be a list of tables ([[prices.tiers]])")
    tiers = sorted((_parse_tier(t, f"{where} tiers[{i}]") for i, t in enumerate(tiers_raw)),
                   key=lambda tier: tier.above_input_tokens)
    thresholds = [tier.above_input_tokens for tier in tiers]
    if len(set(thresholds)) != len(thresholds):
        raise PriceCatalogError(f"{where}: two tiers have the same above_input_tokens")
    return PriceVersion(provider=provider, model=model, aliases=tuple(aliases),
                        effective_from=effective_from, source=source.strip(),
                        prices=_unit_prices(entry, where), tiers=tuple(tiers))


def _parse_tier(table: Any, where: str) -> Tier:
    if not isinstance(table, Mapping):
        raise PriceCatalogError(f"{where} must be a table")
    unknown = set(table) - {"above_input_tokens"} - set(KEY_CLASSES)
    if unknown:
        raise PriceCatalogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    threshold = table.get("above_input_tokens")
    if not _is_int(threshold) or threshold < 0:
        raise PriceCatalogError(f"{where}: above_input_tokens must be a non-negative integer")
    return Tier(above_input_tokens=threshold, prices=_unit_prices(table, where))


def _unit_prices(table: Mapping[str, Any], where: str) -> UnitPrices:
    listed: dict[int, int] = {}
    for key, token_class in KEY_CLASSES.items():
        if key not in table:
            continue
        value = table[key]
        if not _is_int(value) or not 0 <= value <= INT64_MAX:
            raise PriceCatalogError(f"{where}: {key} must be a non-negative integer "
                                    f"(nano-USD per million tokens), got {value!r}")
        listed[token_class] = value
    missing = [key for key in REQUIRED_KEYS if key not in table]
    if missing:
        raise PriceCatalogError(f"{where}: {' and '.join(missing)} required")
    return UnitPrices.resolve(listed)


def _is_int(value: Any) -> TypeGuard[int]:
    # bool is an int subclass; `true` is no price.
    return isinstance(value, int) and not isinstance(value, bool)


def _name(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PriceCatalogError(f"{where}: {key} is required (a non-empty string)")
    return value.strip()


def _effective_from(value: Any, where: str) -> datetime:
    """A TOML date (midnight UTC), a TOML date-time (naive means UTC), or the same as ISO text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PriceCatalogError(f"{where}: effective_from {value!r} is not an ISO date or time") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=timezone.utc)
    raise PriceCatalogError(f"{where}: effective_from must be a date or a time, got {value!r}")


def _index(versions: Iterable[PriceVersion], *, replace: bool) -> _Layer:
    """(provider, model or alias) -> versions ascending by effective_from.

    Two versions for one name at one moment are an error within one source; across
    operator overrides (replace=True) the later one wins.
    """
    by_key: dict[tuple[str, str], dict[datetime, PriceVersion]] = {}
    for version in versions:
        for name in dict.fromkeys((version.model, *version.aliases)):
            slot = by_key.setdefault((version.provider, name), {})
            if version.effective_from in slot and not replace:
                raise PriceCatalogError(
                    f"two prices for {version.provider}/{name} take effect at "
                    f"{_moment_text(version.effective_from)}")
            slot[version.effective_from] = version
    return {key: tuple(slot[moment] for moment in sorted(slot)) for key, slot in by_key.items()}


def _versions(layer: _Layer) -> list[PriceVersion]:
    """Every distinct version of a layer, once each (aliases index a version several times)."""
    return list({id(v): v for versions in layer.values() for v in versions}.values())


def _in_effect(versions: tuple[PriceVersion, ...], moment: datetime) -> PriceVersion | None:
    if not versions:
        return None
    position = bisect.bisect_right([v.effective_from for v in versions], moment)
    return versions[position - 1] if position else None


def _check_breakdown(usage: pb.Usage, counts: list[tuple[pb.TokenClass, int]], model: str) -> None:
    """Prices apply to buckets; buckets that do not make up their totals would bill wrongly, and
    buckets that left out a figure the provider stated (refused_figures) would bill too little."""
    if usage.refused_figures or pb.USAGE_WARNING_FIGURE_OUT_OF_RANGE in usage.warnings:
        raise _Unpriced(f"usage for {model} has figures that are not token counts: "
                        f"{', '.join(usage.refused_figures) or 'not named'}")
    for token_class, tokens in counts:
        if tokens < 0:
            raise _Unpriced(f"usage for {model} has a negative {CLASS_KEYS[token_class]} count")
    inputs = sum(tokens for token_class, tokens in counts if token_class in _INPUT_CLASSES)
    outputs = sum(tokens for token_class, tokens in counts if token_class not in _INPUT_CLASSES)
    if inputs != usage.input.total or outputs != usage.output.total:
        raise _Unpriced(f"usage for {model} is not a consistent breakdown: input buckets sum to "
                        f"{inputs} of input.total {usage.input.total}, output buckets to "
                        f"{outputs} of output.total {usage.output.total}")


def _utc_instant(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a price lookup needs a timezone-aware datetime")
    return at.astimezone(timezone.utc)


def _moment_text(moment: datetime) -> str:
    """A date when the moment is midnight UTC (as catalog entries usually are), else ISO time."""
    if moment.time() == time(0):
        return moment.date().isoformat()
    return moment.isoformat().replace("+00:00", "Z")


def _kind_note(provider: str, kind: str | None) -> str:
    return "" if not kind or kind == provider else f" (provider kind {kind})"


@functools.cache
def _default_catalog() -> PriceCatalog:
    text = resources.files("tollway.service.billing").joinpath("prices.toml").read_text(encoding="utf-8")
    return PriceCatalog.from_toml(text, "service/billing/prices.toml")
