"""Building a process's :class:`~mixhouse.mixer.runtime.Runtime` from settings: the signers, the
chain adapters, the engine, the screener (issue 8 part 4: the wiring lives here, not in a feature)."""

from __future__ import annotations

from collections.abc import Mapping

from mixhouse.chains.base import ChainAdapter
from mixhouse.chains.bitcoin.adapter import BitcoinAdapter
from mixhouse.chains.bitcoin.rpc import BitcoinRpc
from mixhouse.chains.evm.adapter import EvmAdapter
from mixhouse.chains.evm.token import Erc20Adapter
from mixhouse.chains.jobcoin.adapter import JobcoinAdapter
from mixhouse.config import Settings
from mixhouse.db.engine import make_engine
from mixhouse.errors import ConfigError
from mixhouse.keys.audited import AuditedSigner, RetiredKeyGuard
from mixhouse.keys.bip84 import Bip84Keyring
from mixhouse.keys.hd import HdKeyring
from mixhouse.keys.hsm import Pkcs11Signer
from mixhouse.keys.keystore import Mnemonics, software_mnemonics
from mixhouse.keys.signer import Signer, SoftwareSigner
from mixhouse.mixer.runtime import Runtime
from mixhouse.mixer.screening import Screener
from mixhouse.money import Asset, register_assets


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


def build_signers(settings: Settings) -> dict[Asset, Signer]:
    """The key holder of each enabled asset that signs (ETH, BTC), each wrapped in an
    :class:`~mixhouse.keys.audited.AuditedSigner` (its key uses can be audited): one PKCS#11
    signer shared by both, or a software signer per asset whose seed comes from the keystore
    (unlocked here, once) or the settings.

    Raises:
        ConfigError: the keystore cannot be opened (wrong passphrase, missing file...).
    """
    hsm = build_hsm_signer(settings)
    signers: dict[Asset, Signer] = {}
    if hsm is not None:
        # One token session for both chains; a retired pool key generation (mixer/pool_rotation.py)
        # is refused before the token.
        shared = RetiredKeyGuard(AuditedSigner(hsm))
        if settings.evm_enabled:
            signers[Asset.ETH] = shared
        if settings.bitcoin_enabled:
            signers[Asset.BTC] = shared
        return signers
    if not (settings.evm_enabled or settings.bitcoin_enabled):
        return signers
    mnemonics: Mnemonics = software_mnemonics(settings)
    if settings.evm_enabled:
        signers[Asset.ETH] = RetiredKeyGuard(AuditedSigner(SoftwareSigner.for_evm(HdKeyring(mnemonics.evm))))
    if settings.bitcoin_enabled:
        # A retired Bitcoin pool generation's chain is refused (mixer/pool_rotation.py).
        signers[Asset.BTC] = RetiredKeyGuard(AuditedSigner(_bitcoin_software_signer(settings, mnemonics.bitcoin)))
    return signers


def build_adapters(settings: Settings, signers: Mapping[Asset, Signer] | None = None) -> dict[Asset, ChainAdapter]:
    """One adapter per enabled asset, configured from ``settings``, signing with ``signers``
    (default: :func:`build_signers`)."""
    adapters: dict[Asset, ChainAdapter] = {}
    if signers is None:
        signers = build_signers(settings)
    if settings.jobcoin_enabled:
        adapters[Asset.JOBCOIN] = JobcoinAdapter(
            settings.jobcoin_api_url,
            settings.jobcoin_pool_address,
            address_secret=settings.jobcoin_address_secret.get_secret_value().encode(),
        )
    if settings.evm_enabled:
        evm = EvmAdapter(
            settings.evm_rpc_url,
            chain_id=settings.evm_chain_id,
            signer=signers[Asset.ETH],
            confirmations=settings.evm_confirmations,
            max_fee_per_gas_cap=settings.evm_max_fee_per_gas_cap,
        )
        adapters[Asset.ETH] = evm
        # One adapter per configured ERC-20 token, on the ETH adapter's node and signer.
        for token in settings.evm_tokens:
            adapters[Asset(token.symbol)] = Erc20Adapter(
                evm,
                asset=Asset(token.symbol),
                contract=token.contract,
                network_fee=token.network_fee,
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
            signer=signers[Asset.BTC],
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
    # The configured tokens become known to every amount formatter of the process.
    register_assets(settings.assets())
    denylist: list[str] = []
    if settings.denylist_file is not None:
        denylist = settings.denylist_file.read_text(encoding="utf-8").split()
    signers = build_signers(settings)
    return Runtime(
        settings=settings,
        engine=make_engine(database_url, pool_size=pool_size, pre_ping=pre_ping, max_overflow=max_overflow),
        adapters=build_adapters(settings, signers),
        screener=Screener(denylist),
        signers=signers,
    )
