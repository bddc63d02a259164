"""Sanctions screening of deposits.

The sending addresses of every deposit are checked before it joins the pool against the OFAC
SDN digital-currency address lists shipped in ``sanctions_data/`` (see its SOURCE.md), the
lists loaded later with ``mixhouse sanctions refresh`` (stored in ``sanctioned_addresses``),
and the operator's denylist. A match freezes the deposit. Screening is always on: there is no
setting to turn it off.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mixhouse.db.tables import sanctioned_addresses
from mixhouse.errors import InvalidInput

_EVM_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def normalize_for_screening(address: str) -> str:
    """The form addresses are compared in: EVM addresses lower-cased (the SDN list mixes
    EIP-55 and lower case), everything else as written (base58 and bech32 are compared
    exactly; bech32 is lower-cased as its canonical form)."""
    stripped = address.strip()
    if _EVM_ADDRESS.match(stripped) or stripped.lower().startswith(("bc1", "tb1", "bcrt1")):
        return stripped.lower()
    return stripped


def shipped_lists() -> dict[str, frozenset[str]]:
    """The OFAC lists shipped with the package: ``{"ofac:ETH": {...}, "ofac:XBT": {...}}``."""
    out: dict[str, frozenset[str]] = {}
    folder = resources.files("mixhouse.mixer.sanctions_data")
    for item in folder.iterdir():
        name = item.name
        if name.startswith("sanctioned_addresses_") and name.endswith(".txt"):
            ticker = name.removeprefix("sanctioned_addresses_").removesuffix(".txt")
            lines = item.read_text(encoding="utf-8").splitlines()
            out[f"ofac:{ticker}"] = frozenset(normalize_for_screening(a) for a in lines if a.strip())
    return out


@dataclass(frozen=True, slots=True)
class ScreeningResult:
    """The verdict on a deposit.

    Attributes:
        hits: ``(address, source)`` pairs that matched; empty means clear.
    """

    hits: tuple[tuple[str, str], ...]

    @property
    def clear(self) -> bool:
        """True when no sending address matched any list."""
        return not self.hits

    def reason(self) -> str:
        """A one-line reason for the operator."""
        return "; ".join(f"{addr} is listed in {source}" for addr, source in self.hits)


class Screener:
    """Screens addresses against the shipped lists plus what the database holds.

    The shipped lists are loaded once; the database lists (refreshed SDN data, the operator
    denylist) are read on every screening, so a refresh takes effect at once in every process.
    """

    def __init__(self, extra_denylist: Iterable[str] = ()) -> None:
        index: dict[str, str] = {}
        for source, addresses in shipped_lists().items():
            for address in addresses:
                index.setdefault(address, source)
        for address in extra_denylist:
            if address.strip():
                index[normalize_for_screening(address)] = "operator-denylist-file"
        self._static = index

    async def screen(self, conn: AsyncConnection, addresses: Iterable[str]) -> ScreeningResult:
        """Check ``addresses`` (the deposit's senders).

        Returns:
            A :class:`ScreeningResult`; ``hits`` lists every match.
        """
        normalized = {normalize_for_screening(a): a for a in addresses}
        hits = [(orig, self._static[norm]) for norm, orig in normalized.items() if norm in self._static]
        if normalized:
            rows = await conn.execute(
                select(sanctioned_addresses.c.address_norm, sanctioned_addresses.c.source).where(
                    sanctioned_addresses.c.address_norm.in_(list(normalized))
                )
            )
            hits.extend((normalized[r.address_norm], r.source) for r in rows)
        return ScreeningResult(tuple(sorted(set(hits))))


def parse_list_file(path: Path) -> list[str]:
    """Addresses from a list file: a JSON array, one address per line, or an OFAC SDN XML
    (``sdn_advanced.xml`` or ``sdn.xml``: every feature/ID whose type names a
    "Digital Currency Address").

    Raises:
        InvalidInput: the file is empty or holds no address.
    """
    raw = path.read_text(encoding="utf-8")
    stripped = raw.lstrip()
    addresses: list[str]
    if stripped.startswith("["):
        addresses = [str(a) for a in json.loads(raw)]
    elif stripped.startswith("<"):
        addresses = _addresses_from_sdn_xml(raw)
    else:
        addresses = [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]
    if not addresses:
        raise InvalidInput(f"{path} holds no address")
    return addresses


def _addresses_from_sdn_xml(raw: str) -> list[str]:
    root = ET.fromstring(raw)  # noqa: S314 - a government file the operator chose to load
    found: list[str] = []
    # sdn.xml: <idList><id><idType>Digital Currency Address - XBT</idType><idNumber>...</idNumber>
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "id":
            kind = number = None
            for child in element:
                ctag = child.tag.rsplit("}", 1)[-1]
                if ctag == "idType":
                    kind = child.text or ""
                elif ctag == "idNumber":
                    number = child.text or ""
            if kind and number and "Digital Currency Address" in kind:
                found.append(number.strip())
        # sdn_advanced.xml keeps the address in a <VersionDetail> under a digital-currency feature.
        elif tag == "VersionDetail" and element.text and _looks_like_address(element.text.strip()):
            found.append(element.text.strip())
    return found


def _looks_like_address(text: str) -> bool:
    return bool(_EVM_ADDRESS.match(text)) or bool(
        re.fullmatch(r"[13][a-km-zA-HJ-NP-Z1-9]{25,34}|bc1[0-9a-z]{11,71}", text)
    )


async def store_list(conn: AsyncConnection, addresses: Iterable[str], source: str) -> int:
    """Add ``addresses`` to the database list ``source`` (``"ofac-refresh"``, ``"operator"``).

    Returns:
        How many were new.
    """
    rows = [{"address_norm": normalize_for_screening(a), "source": source} for a in addresses if a.strip()]
    if not rows:
        return 0
    # Count the rows RETURNING gives back: SQLAlchemy reports no rowcount for an INSERT (-1).
    result = await conn.execute(
        insert(sanctioned_addresses)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(sanctioned_addresses.c.address_norm)
    )
    return len(result.all())
