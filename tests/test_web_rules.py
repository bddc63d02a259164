"""The pure parts of the pages: withdrawal-address rules, payment URIs, QR codes, log redaction
of mix-page paths."""

from __future__ import annotations

import segno

from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.errors import InvalidAddress, InvalidInput
from mixhouse.logs import redact_target
from mixhouse.mixer.withdrawals import IS_DEPOSIT, IS_POOL, NOT_DISTINCT, check_withdrawals
from mixhouse.web.mix_pages import duration
from mixhouse.web.payment_uri import payment_uri, qr_svg

SECRET = b"test-secret-of-the-web-rules-tests"
ADAPTER = JobcoinAdapter("http://127.0.0.1:9/api", "mixhouse-pool", address_secret=SECRET)


def test_each_problem_is_tied_to_its_field() -> None:
    checked = check_withdrawals(
        ADAPTER, ["a", " padded", "A", "mixhouse-pool", "dep"], max_addresses=10, deposit_addresses=["dep"]
    )
    assert [(p.index, p.message) for p in checked.problems][1:] == [(2, NOT_DISTINCT), (3, IS_POOL), (4, IS_DEPOSIT)]
    assert checked.problems[0].index == 1
    assert checked.problems[0].invalid
    assert checked.normalized == ["a", None, "A", "mixhouse-pool", "dep"]


def test_first_error_keeps_the_api_precedence() -> None:
    err = check_withdrawals(ADAPTER, ["mixhouse-pool", "x", "x"], max_addresses=10).first_error()
    assert isinstance(err, InvalidInput)
    assert not isinstance(err, InvalidAddress)
    assert str(err) == NOT_DISTINCT
    err = check_withdrawals(ADAPTER, ["x", "x", ""], max_addresses=10).first_error()
    assert isinstance(err, InvalidAddress)
    err = check_withdrawals(ADAPTER, ["a", "b"], max_addresses=1).first_error()
    assert str(err) == "give between 1 and 1 withdrawal addresses"
    assert check_withdrawals(ADAPTER, ["a", "b"], max_addresses=2).first_error() is None


def test_payment_uris() -> None:
    assert payment_uri("BTC", "bcrt1qm8rk345pvw2le97nxv9k43drkp5d80hrqay04u") == (
        "bitcoin:BCRT1QM8RK345PVW2LE97NXV9K43DRKP5D80HRQAY04U"
    )
    assert payment_uri("BTC", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2") == "bitcoin:1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
    eth = "0x8C8d35429F74ec245F8Ef2f4Fd1e551cFF97d650"
    assert payment_uri("ETH", eth, chain_id=1) == f"ethereum:{eth}@1"
    assert payment_uri("ETH", eth) == f"ethereum:{eth}"
    assert payment_uri("JOBCOIN", "abc") == "abc"
    usdt = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    assert payment_uri("USDT", eth, chain_id=1, contract=usdt) == f"ethereum:{usdt}@1/transfer?address={eth}"


def test_qr_svg_encodes_the_uri() -> None:
    svg = qr_svg("bitcoin:BCRT1QXYZ")
    assert svg.startswith("<svg")
    assert "viewBox" in svg
    assert "width=" not in svg.split(">", 1)[0]  # scales with CSS
    # The symbol of exactly this text, with its 4-module quiet zone, at scale 4.
    width, height = segno.make("bitcoin:BCRT1QXYZ", error="m", micro=False).symbol_size(scale=4, border=4)
    assert f'viewBox="0 0 {width} {height}"' in svg


def test_mix_page_paths_are_redacted_in_logs() -> None:
    assert redact_target("/mix/AbCdEf123_-xyz") == "/mix/{mix_id}"
    assert redact_target("/mix/AbCdEf123_-xyz/events") == "/mix/{mix_id}/events"
    assert redact_target("/mix/check") == "/mix/check"
    assert redact_target("/api/v1/mixes/secret-id?x=1") == "/api/v1/mixes/{mix_id}?x=..."


def test_durations_in_words() -> None:
    assert duration(0) == "0 s"
    assert duration(90) == "90 s"
    assert duration(3600) == "1 h"
    assert duration(5400) == "1 h 30 min"
    assert duration(7 * 86400) == "7 days"
