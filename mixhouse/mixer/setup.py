"""Building a :class:`Runtime` from settings: the engine, the adapters, the screener."""

from __future__ import annotations

from mixhouse.chains.base import ChainAdapter
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.config import Settings
from mixhouse.db.engine import make_engine
from mixhouse.errors import ConfigError
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.keys.keystore import Mnemonics, software_mnemonics
from mixhouse.keys.signer import Signer, SoftwareSigner
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import Screener
from mixhouse.money import Asset


def build_hsm_signer(settings: Settings) -> Pkcs11Signer | None:
    """The PKCS#11 signer of ``MIXHOUSE_SIGNER=pkcs11`` (one session for ETH and BTC keys,
    whose paths differ), or ``None`` for the software signer. The token is opened on first
    use, so a token that is down delays sends, not the start of the process."""
    if settings.signer != "pkcs11":
        return None
    module, token, pin = settings.pkcs11_module, settings.pkcs11_token_label, settings.pkcs11_pin
    if module is None or token is None or pin is None:  # Settings._check refuses this already
        raise ConfigError("MIXHOUSE_SIGNER=pkcs11 needs the module, the token label and the PIN")
    return Pkcs11Signer(
        module=module,
        token_label=token,
        pin=pin.get_secret_value(),
        label_prefix=settings.pkcs11_label_prefix,
    )


def build_adapters(settings: Settings) -> dict[Asset, ChainAdapter]:
    """One adapter per enabled asset, configured from ``settings``."""
    adapters: dict[Asset, ChainAdapter] = {}
    hsm = build_hsm_signer(settings)
    # The software signer's phrases: from the keystore (unlocked here, once) or the settings.
    mnemonics: Mnemonics | None = None
    if hsm is None and (settings.evm_enabled or settings.bitcoin_enabled):
        mnemonics = software_mnemonics(settings)
    if settings.jobcoin_enabled:
        adapters[Asset.JOBCOIN] = JobcoinAdapter(
            settings.jobcoin_api_url,
            settings.jobcoin_pool_address,
            address_secret=settings.jobcoin_address_secret.get_secret_value().encode(),
        )
    if settings.evm_enabled:
        adapters[Asset.ETH] = EvmAdapter(
            settings.evm_rpc_url,
            chain_id=settings.evm_chain_id,
            signer=hsm or SoftwareSigner.for_evm(HdKeyring(mnemonics.evm if mnemonics else "")),
            confirmations=settings.evm_confirmations,
            max_fee_per_gas_cap=settings.evm_max_fee_per_gas_cap,
        )
    if settings.bitcoin_enabled:
        password = settings.bitcoin_rpc_password
        adapters[Asset.BTC] = BitcoinAdapter(
            BitcoinRpc(
                settings.bitcoin_rpc_url,
                user=settings.bitcoin_rpc_user,
                password=None if password is None else password.get_secret_value(),
            ),
            network=settings.bitcoin_network,
            signer=hsm or _bitcoin_software_signer(settings, mnemonics.bitcoin if mnemonics else ""),
            confirmations=settings.bitcoin_confirmations,
            fallback_fee_rate=settings.bitcoin_fallback_fee_rate,
            max_fee_rate=settings.bitcoin_max_fee_rate,
        )
    return adapters


def _bitcoin_software_signer(settings: Settings, mnemonic: str) -> Signer:
    keyring = Bip84Keyring(mnemonic, settings.bitcoin_network)
    return SoftwareSigner.for_bip84(keyring)


def build_runtime(
    settings: Settings,
    database_url: str,
    *,
    pool_size: int = 10,
    pre_ping: bool = True,
    max_overflow: int | None = None,
) -> Runtime:
    """The runtime of a process: engine on ``database_url`` (libpq URI), adapters, screener.

    ``pool_size``, ``pre_ping`` and ``max_overflow`` as in :func:`mixhouse.db.engine.make_engine`
    (the API's differ).
    """
    denylist: list[str] = []
    if settings.denylist_file is not None:
        denylist = settings.denylist_file.read_text(encoding="utf-8").split()
    return Runtime(
        settings=settings,
        engine=make_engine(database_url, pool_size=pool_size, pre_ping=pre_ping, max_overflow=max_overflow),
        adapters=build_adapters(settings),
        screener=Screener(denylist),
    )
