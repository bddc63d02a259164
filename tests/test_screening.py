"""Sanctions screening against the shipped OFAC lists, the database lists and a denylist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from mixhouse.db.tables import sanctioned_addresses
from mixhouse.errors import InvalidInput
from mixhouse.mixer.screening import (
    Screener,
    normalize_for_screening,
    parse_list_file,
    shipped_lists,
    store_list,
)

OFAC_DIR = Path("/work/shared/data/ofac")
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "mixhouse" / "mixer" / "sanctions_data"


def _list_dir() -> Path:
    """The shared OFAC data when present, else the package's own copy (same files)."""
    return OFAC_DIR if (OFAC_DIR / "sanctioned_addresses_ETH.txt").is_file() else SHIPPED_DIR


def _file_lines(ticker: str) -> list[str]:
    text = (_list_dir() / f"sanctioned_addresses_{ticker}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


ETH_LINES = _file_lines("ETH")
XBT_LINES = _file_lines("XBT")
# A mixed-case (EIP-55) entry, so that lower and upper case really differ from it.
ETH_SAMPLE = next(a for a in ETH_LINES if a[2:] != a[2:].lower() and a[2:] != a[2:].upper())
XBT_BASE58 = next(a for a in XBT_LINES if a[0] in "13")
XBT_BECH32 = next(a for a in XBT_LINES if a.startswith("bc1"))
CLEAN_ETH = "0x" + "5a" * 20
CLEAN_XBT = "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"


def test_fixture_addresses_are_what_they_claim() -> None:
    eth_norm = {a.lower() for a in ETH_LINES}
    assert CLEAN_ETH.lower() not in eth_norm
    assert CLEAN_XBT not in XBT_LINES
    assert ETH_SAMPLE.startswith("0x")
    assert len(ETH_SAMPLE) == 42


def test_shipped_lists_load() -> None:
    lists = shipped_lists()
    assert lists["ofac:ETH"]
    assert lists["ofac:XBT"]
    assert len(lists["ofac:ETH"]) == len(ETH_LINES)
    assert len(lists["ofac:XBT"]) == len(XBT_LINES)
    # EVM addresses are stored lower-cased, base58 ones as written.
    assert ETH_SAMPLE.lower() in lists["ofac:ETH"]
    assert ETH_SAMPLE not in lists["ofac:ETH"]
    assert XBT_BASE58 in lists["ofac:XBT"]


def test_shipped_copies_match_shared_data() -> None:
    if not (OFAC_DIR / "sanctioned_addresses_ETH.txt").is_file():
        pytest.skip("shared OFAC data not present")
    for ticker in ("ETH", "XBT"):
        shared = (OFAC_DIR / f"sanctioned_addresses_{ticker}.txt").read_bytes()
        shipped = (SHIPPED_DIR / f"sanctioned_addresses_{ticker}.txt").read_bytes()
        assert shared == shipped


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0xAbCdEf0123456789aBcDeF0123456789AbCdEf01", "0xabcdef0123456789abcdef0123456789abcdef01"),
        ("  0xABCDEF0123456789ABCDEF0123456789ABCDEF01\n", "0xabcdef0123456789abcdef0123456789abcdef01"),
        ("BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),
        ("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"),
        ("0xABC", "0xABC"),  # not an EVM address: compared as written
    ],
)
def test_normalize_for_screening(address: str, expected: str) -> None:
    assert normalize_for_screening(address) == expected


@pytest.mark.parametrize(
    "variant",
    [ETH_SAMPLE, ETH_SAMPLE.lower(), "0x" + ETH_SAMPLE[2:].upper(), f"  {ETH_SAMPLE}  "],
)
async def test_eth_sdn_address_matches_in_any_case(engine: AsyncEngine, variant: str) -> None:
    async with engine.connect() as conn:
        result = await Screener().screen(conn, [CLEAN_ETH, variant])
    assert not result.clear
    assert result.hits == ((variant, "ofac:ETH"),)
    assert variant in result.reason()
    assert "ofac:ETH" in result.reason()


async def test_xbt_addresses_match(engine: AsyncEngine) -> None:
    screener = Screener()
    async with engine.connect() as conn:
        result = await screener.screen(conn, [XBT_BASE58])
        assert result.hits == ((XBT_BASE58, "ofac:XBT"),)
        # bech32 is case-insensitive; its canonical form is lower case.
        upper = await screener.screen(conn, [XBT_BECH32.upper()])
        assert upper.hits == ((XBT_BECH32.upper(), "ofac:XBT"),)
        # base58 is case-sensitive: another case is another address.
        swapped = await screener.screen(conn, [XBT_BASE58.swapcase()])
        assert swapped.clear


async def test_clean_addresses_pass(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        result = await Screener().screen(conn, [CLEAN_ETH, CLEAN_XBT, CLEAN_ETH.upper()])
        assert result.clear
        assert result.hits == ()
        assert result.reason() == ""
        assert (await Screener().screen(conn, [])).clear


async def test_extra_denylist(engine: AsyncEngine) -> None:
    denied_eth = "0x" + "Ab" * 20
    screener = Screener(extra_denylist=[denied_eth, "   ", CLEAN_XBT + "\n"])
    async with engine.connect() as conn:
        result = await screener.screen(conn, [denied_eth.lower(), CLEAN_XBT, "0x" + "cd" * 20])
        assert result.hits == tuple(
            sorted([(denied_eth.lower(), "operator-denylist-file"), (CLEAN_XBT, "operator-denylist-file")])
        )
        # Without the denylist the same addresses are clean.
        assert (await Screener().screen(conn, [denied_eth, CLEAN_XBT])).clear


async def test_store_list_then_screen(engine: AsyncEngine) -> None:
    listed_eth = "0x" + "7E" * 20
    listed_xbt = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
    async with engine.begin() as conn:
        # Blank lines are skipped; the same address twice in one batch counts once.
        added = await store_list(conn, [listed_eth, listed_xbt, "", "  ", listed_eth.lower()], "operator")
        assert added == 2
        # Same addresses again (another case for the EVM one): nothing new.
        assert await store_list(conn, [listed_eth.lower(), listed_xbt], "operator") == 0
        # The same address under another source is a separate row.
        assert await store_list(conn, [listed_xbt], "ofac-refresh") == 1
        assert await store_list(conn, [], "operator") == 0
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                select(sanctioned_addresses.c.address_norm, sanctioned_addresses.c.source).order_by(
                    sanctioned_addresses.c.address_norm, sanctioned_addresses.c.source
                )
            )
        ).all()
        assert [tuple(r) for r in stored] == sorted(
            [(listed_eth.lower(), "operator"), (listed_xbt, "ofac-refresh"), (listed_xbt, "operator")]
        )
        result = await Screener().screen(conn, [listed_eth, CLEAN_ETH, listed_xbt])
        assert result.hits == tuple(
            sorted([(listed_eth, "operator"), (listed_xbt, "ofac-refresh"), (listed_xbt, "operator")])
        )
        # A shipped-list address that is also in the database is reported from both.
    async with engine.begin() as conn:
        await store_list(conn, [ETH_SAMPLE], "operator")
    async with engine.connect() as conn:
        both = await Screener().screen(conn, [ETH_SAMPLE.lower()])
        assert both.hits == ((ETH_SAMPLE.lower(), "ofac:ETH"), (ETH_SAMPLE.lower(), "operator"))


def test_parse_txt_list(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"# operator denylist\n\n{ETH_SAMPLE}\n  {XBT_BASE58}  \n\n{CLEAN_ETH}", encoding="utf-8")
    assert parse_list_file(path) == [ETH_SAMPLE, XBT_BASE58, CLEAN_ETH]


def test_parse_shared_txt_file() -> None:
    assert parse_list_file(_list_dir() / "sanctioned_addresses_ETH.txt") == ETH_LINES


def test_parse_json_list(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([ETH_SAMPLE, XBT_BASE58]), encoding="utf-8")
    assert parse_list_file(path) == [ETH_SAMPLE, XBT_BASE58]
    shared_json = _list_dir() / "sanctioned_addresses_ETH.json"
    if shared_json.is_file():
        assert parse_list_file(shared_json) == ETH_LINES


SDN_XML = """<?xml version="1.0" standalone="yes"?>
<sdnList xmlns="http://tempuri.org/sdnList.xsd">
  <publshInformation><Publish_Date>01/01/2024</Publish_Date></publshInformation>
  <sdnEntry>
    <uid>1</uid>
    <lastName>EXAMPLE ONE</lastName>
    <idList>
      <id><uid>11</uid><idType>Digital Currency Address - XBT</idType><idNumber>{xbt}</idNumber></id>
      <id><uid>12</uid><idType>Passport</idType><idNumber>X1234567</idNumber></id>
    </idList>
  </sdnEntry>
  <sdnEntry>
    <uid>2</uid>
    <idList>
      <id><uid>21</uid><idType>Digital Currency Address - ETH</idType><idNumber> {eth} </idNumber></id>
    </idList>
  </sdnEntry>
  <sdnEntry><uid>3</uid><lastName>NO ADDRESS</lastName></sdnEntry>
</sdnList>
"""


def test_parse_sdn_xml(tmp_path: Path) -> None:
    path = tmp_path / "sdn.xml"
    path.write_text(SDN_XML.format(xbt=XBT_BASE58, eth=ETH_SAMPLE), encoding="utf-8")
    assert parse_list_file(path) == [XBT_BASE58, ETH_SAMPLE]


def test_parse_sdn_xml_without_namespace(tmp_path: Path) -> None:
    path = tmp_path / "sdn.xml"
    path.write_text(
        "<sdnList><sdnEntry><idList><id><idType>Digital Currency Address - XBT</idType>"
        f"<idNumber>{XBT_BASE58}</idNumber></id></idList></sdnEntry></sdnList>",
        encoding="utf-8",
    )
    assert parse_list_file(path) == [XBT_BASE58]


def test_parse_sdn_advanced_xml(tmp_path: Path) -> None:
    path = tmp_path / "sdn_advanced.xml"
    path.write_text(
        '<Sanctions xmlns="https://sanctionslistservice.ofac.treas.gov/api/PublicationPreview/exports/ADVANCED_XML">'
        "<DistinctParties><DistinctParty><Profile><Feature><FeatureVersion>"
        f"<VersionDetail>{ETH_SAMPLE}</VersionDetail></FeatureVersion></Feature>"
        "<Feature><FeatureVersion><VersionDetail>Moscow</VersionDetail></FeatureVersion></Feature>"
        "</Profile></DistinctParty></DistinctParties></Sanctions>",
        encoding="utf-8",
    )
    assert parse_list_file(path) == [ETH_SAMPLE]


@pytest.mark.parametrize(
    "content",
    [
        "",
        "   \n\n\t\n",
        "# only a comment\n",
        "[]",
        (
            "<sdnList><sdnEntry><idList><id><idType>Passport</idType><idNumber>X1</idNumber></id>"
            "</idList></sdnEntry></sdnList>"
        ),
    ],
)
def test_parse_empty_list_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput):
        parse_list_file(path)
