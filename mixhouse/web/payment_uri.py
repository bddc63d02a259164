"""What the mix page's QR code encodes: a payment URI where the chain has one, and its SVG.

* Bitcoin: BIP-21, ``bitcoin:<address>`` (no amount: the user chooses it inside the limits).
  Bech32 addresses are upper-cased, which BIP-173 allows and which lets the QR code use its
  compact alphanumeric mode (BIP-21 reads the scheme case-insensitively).
* Ethereum: EIP-681, ``ethereum:<address>@<chain id>`` (a plain value transfer).
* Jobcoin: no URI scheme exists; the code holds the address itself.

The QR code is drawn by segno (ISO/IEC 18004) as an inline SVG: nothing is fetched from the
internet, and the page needs no image request.
"""

from __future__ import annotations

import io

import segno

from mixhouse.money import Asset


def payment_uri(asset: Asset | str, address: str, *, chain_id: int | None = None, contract: str | None = None) -> str:
    """The text a wallet scans to pay ``address``.

    Args:
        asset: the mix's asset.
        address: the deposit address, canonical form.
        chain_id: EIP-155 chain id for ETH (omitted from the URI when ``None``).
        contract: the token contract of an ERC-20 asset: the URI is then EIP-681's
            ``ethereum:<contract>@<chain_id>/transfer?address=<address>`` (no amount: the user
            picks it).

    Sources: BIP-21 (bitcoin: URIs), BIP-173 (bech32 may be upper case), EIP-681.
    """
    kind = Asset(asset)
    if contract is not None:
        at = "" if chain_id is None else f"@{chain_id}"
        return f"ethereum:{contract}{at}/transfer?address={address}"
    if kind == Asset.BTC:
        upper = address.upper()
        # Only bech32 is case-insensitive; base58 addresses keep their case.
        shown = upper if upper.startswith(("BC1", "TB1", "BCRT1")) else address
        return f"bitcoin:{shown}"
    if kind == Asset.ETH:
        return f"ethereum:{address}" + ("" if chain_id is None else f"@{chain_id}")
    return address


def qr_svg(text: str, *, scale: int = 4) -> str:
    """An SVG document (string) of the QR code of ``text``, error correction M, 4-module quiet zone.

    The SVG has a ``viewBox`` and no fixed size, so CSS scales it to the screen.
    """
    code = segno.make(text, error="m", micro=False)
    out = io.BytesIO()
    code.save(out, kind="svg", scale=scale, border=4, xmldecl=False, svgns=True, omitsize=True, title="QR code")
    return out.getvalue().decode("utf-8")
