"""Settings, read once from the environment (prefix ``MIXHOUSE_``) and passed in.

No module reads settings from a global: every process builds one :class:`Settings` and hands
it down. Unsafe defaults (the development admin key, the well-known development mnemonic)
are refused outside ``environment=development``.

Every secret setting (a ``SecretStr`` field, e.g. ``admin_api_key``) can also be given as a file:
``MIXHOUSE_<NAME>_FILE=/run/secrets/x`` reads the secret from that file (Docker and Kubernetes
secrets), one trailing newline stripped. Setting both ``MIXHOUSE_<NAME>`` and its ``_FILE`` is
an error. In production (:meth:`Settings._check`) a key shorter than
:data:`MIN_PRODUCTION_KEY_CHARS`, a development default, or a mnemonic that is not a valid
BIP-39 phrase or is the public development one is refused, naming the setting, never its value.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from embit import bip39  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mixhouse.errors import ConfigError
from mixhouse.money import Asset, AssetInfo, AssetRegistry

DEV_ADMIN_KEY = "dev-admin-key-change-me"
DEV_ADDRESS_SECRET = "dev-address-secret-change-me"  # noqa: S105 - refused in production
# The mnemonic anvil and Hardhat derive their dev accounts from: public, for development only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
# Production refuses shorter keys (admin key, address secret, checkpoint key): 32 characters
# of a random hex or base64 string carry at least 128 bits.
MIN_PRODUCTION_KEY_CHARS = 32
# The node's RPC password is the operator's node's, not ours: a looser floor.
MIN_PRODUCTION_PASSWORD_CHARS = 16
# A keystore passphrase (mixhouse.keys.keystore) is typed by a person: Argon2id slows guessing,
# it does not make a short passphrase strong.
MIN_PRODUCTION_PASSPHRASE_CHARS = 16
ENV_PREFIX = "MIXHOUSE_"


class TokenSettings(BaseModel):
    """One ERC-20 token a deployment mixes (an entry of ``MIXHOUSE_EVM_TOKENS``, a JSON list).

    ``{"symbol": "USDT", "contract": "0xdAC17F958D2ee523a2206206994597C13D831ec7", "decimals": 6,
    "dust": 10000, "min_deposit": 10000000, "max_deposit": 100000000000}``: amounts in the token's
    base unit (USDT: 10**-6 USDT). ``decimals`` must be what the contract's ``decimals()`` says.

    Attributes:
        symbol: the asset code it is mixed under (2-16 of ``A-Z0-9``).
        contract: the token contract's address on the EVM chain of ``evm_rpc_url``.
        decimals: base units per token as a power of ten, 0..36.
        dust: the smallest payout, base units.
        min_deposit, max_deposit: deposit limits, base units.
        network_fee: base units charged to the user per send (the sweep and each payout) for
            the gas the token's pool pays in ETH (README "ERC-20 tokens"); 0 by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str = Field(pattern=r"^[A-Z][A-Z0-9]{1,15}$")
    contract: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    decimals: int = Field(ge=0, le=36)
    dust: int = Field(ge=1)
    min_deposit: int = Field(ge=1)
    max_deposit: int = Field(ge=1)
    network_fee: int = Field(default=0, ge=0)

    def info(self) -> AssetInfo:
        """The token as an :class:`~mixhouse.money.AssetInfo` (its contract in EIP-55 form)."""
        from eth_utils.address import to_checksum_address  # noqa: PLC0415 - eth_utils is slow to import

        return AssetInfo(
            Asset(self.symbol),
            "evm",
            self.decimals,
            f"{self.symbol} base unit (10^-{self.decimals} {self.symbol})",
            dust=self.dust,
            contract=str(to_checksum_address(self.contract)),
        )


def _is_secret(annotation: Any) -> bool:
    """Whether a field's type is ``SecretStr`` or ``SecretStr | None``."""
    if annotation is SecretStr:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return SecretStr in get_args(annotation)
    return False


class SecretFileSource(PydanticBaseSettingsSource):
    """Settings source reading each secret field from the file named by ``MIXHOUSE_<NAME>_FILE``.

    It ranks below keyword arguments and above the plain environment. The file's content is
    the value, with its trailing newline (``\\n`` or ``\\r\\n``) stripped.

    Raises:
        ConfigError: both ``MIXHOUSE_<NAME>`` and ``MIXHOUSE_<NAME>_FILE`` are set, or the file
            cannot be read (the message names the variable and the path, never the content).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        """Unused: :meth:`__call__` reads every secret field at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """``{field name: secret text}`` for every secret field given as a file."""
        environ = {key.upper(): value for key, value in os.environ.items()}
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not _is_secret(field.annotation):
                continue
            variable = f"{ENV_PREFIX}{name.upper()}"
            path = environ.get(f"{variable}_FILE")
            if path is None:
                continue
            if variable in environ:
                raise ConfigError(f"set {variable} or {variable}_FILE, not both")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(f"{variable}_FILE: cannot read {path}: {reason}") from None
            values[name] = text.removesuffix("\n").removesuffix("\r")
        return values


class Settings(BaseSettings):
    """Every setting of every Mixhouse process.

    Amounts are integers in base units (jobcoin base unit = 1e-8 jobcoin, wei for ETH).
    Durations are seconds.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then ``MIXHOUSE_<NAME>_FILE`` secrets, then the environment."""
        return (init_settings, SecretFileSource(settings_cls), env_settings, dotenv_settings, file_secret_settings)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".mixhouse")
    # Unset: an embedded PostgreSQL runs in ``data_dir/pg``. Set: an external server,
    # e.g. ``postgresql://user@host:5432/mixhouse``.
    database_url: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # uvicorn worker processes of `mixhouse serve` (mixhouse.api.serving): one serves about a
    # core's worth of requests; 1 keeps the API in the command's own process.
    api_workers: int = Field(default=1, ge=1, le=64)
    # uvicorn's access log (paths redacted, see mixhouse.logs): off by default, since it
    # doubled the CPU of a status read (issue 14 item 8); /metrics counts requests by route.
    api_access_log: bool = False
    # Status bodies cached per API process, evicted by LISTEN/NOTIFY (mixhouse.api.fast_status).
    # Turn off where LISTEN cannot work (a pooler in transaction mode between API and database).
    api_status_cache: bool = True
    admin_api_key: SecretStr = SecretStr(DEV_ADMIN_KEY)

    # Fees: the range is quoted when a mix is created; the fee of each pooled deposit is drawn
    # in base units inside it (plus the remainder below the payout quantum, still inside it).
    # Nothing is charged on a deposit that is not paid out. Wide by default (0.5-5%, 2.75% on
    # average): a mix with one withdrawal address can only hide among deposits whose ranges
    # overlap its own, so the range's width is what hides an amount few others share (issue
    # 13's realistic population: 1.5% -> 1.1% linked at seed 13, 3.0% -> 1.8% at seed 7, 1-3%
    # against 0.5-5%).
    fee_min_bps: int = Field(default=50, ge=0, le=5_000)
    fee_max_bps: int = Field(default=500, ge=0, le=5_000)
    # Payout delays are drawn inside [delay_min, delay_max] chosen per mix within these bounds.
    default_delay_min_seconds: int = Field(default=60, ge=0)
    default_delay_max_seconds: int = Field(default=6 * 3600, ge=0)
    max_delay_seconds: int = Field(default=72 * 3600, ge=0)
    mix_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    # Deposits that arrive after expiry are still mixed during this grace period (the
    # address stays watched); later ones are held for the operator.
    late_deposit_grace_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    max_withdrawal_addresses: int = Field(default=10, ge=1, le=50)
    # Payout rounds: every round, the due payouts of every mix leave together, in one batch.
    payout_round_seconds: int = Field(default=10, ge=1, le=59)  # a seconds field of the cron tick
    payout_batch_size: int = Field(default=500, ge=1, le=10_000)
    # UTXO chains (Bitcoin): at most this many payouts (outputs, change not counted) share one
    # transaction; 1 turns batching off (each payout its own transaction and job, as before).
    utxo_batch_max_outputs: int = Field(default=50, ge=1, le=1000)
    # The release gate: a deposit's payouts leave only once the analyzer counts at least this
    # many deposits that could have paid them (its own included), or once the mix's maximum
    # wait (its delay_max plus privacy_max_extra_wait_seconds, shown at creation) is reached.
    # 1 turns the gate off.
    privacy_gate_k: int = Field(default=5, ge=1, le=10_000)
    privacy_max_extra_wait_seconds: int = Field(default=6 * 3600, ge=0)

    # Jobcoin
    jobcoin_enabled: bool = True
    jobcoin_api_url: str = "http://127.0.0.1:8111/api"
    jobcoin_pool_address: str = "mixhouse-pool"
    # Keys the derivation of Jobcoin deposit addresses, so outsiders cannot enumerate them.
    jobcoin_address_secret: SecretStr = SecretStr(DEV_ADDRESS_SECRET)
    jobcoin_min_deposit: int = 100_000_000  # 1 jobcoin
    jobcoin_max_deposit: int = 1_000_000 * 100_000_000
    # A Jobcoin send whose outcome is unknown is looked up in the ledger history only after
    # this long, so that a request still in flight has landed or died.
    jobcoin_send_settle_seconds: float = Field(default=10.0, ge=0)
    ledger_host: str = "127.0.0.1"
    ledger_port: int = 8111

    # HTTP request limits of the API and the ledger (mixhouse.http_guard), checked before
    # any parsing: a larger body is answered 413 (on Content-Length before it is read, or as
    # soon as a streamed body grows past it); a non-form body nesting arrays or objects
    # deeper is answered 400. The depth stays far below the recursion limit (1000).
    http_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    http_max_json_depth: int = Field(default=64, ge=4, le=200)

    # Mix creation limits (mixhouse.mixer.admission), kept in PostgreSQL so that every API
    # process shares them. A client (its network address, IPv6 by prefix) creates at most
    # mix_create_rate_per_client mixes per mix_create_rate_window_seconds, as a burst or
    # spread out (0 turns it off). At most max_open_mixes mixes await a deposit at once
    # (0: no cap). Beyond either: 429 with Retry-After.
    mix_create_rate_per_client: int = Field(default=30, ge=0)
    mix_create_rate_window_seconds: int = Field(default=60, ge=1, le=86_400)
    max_open_mixes: int = Field(default=50_000, ge=0)
    # The client of a request is its peer address, or, when the peer is one of these
    # proxies (addresses or networks, JSON in the env: ["10.0.0.0/8"]), the address the
    # proxies put in X-Forwarded-For (the rightmost one that is not itself a trusted proxy).
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    # IPv6 clients are counted by network: one host usually holds a whole /64.
    rate_limit_ipv6_prefix: int = Field(default=64, ge=16, le=128)

    # Ethereum (any JSON-RPC node; anvil in development)
    evm_enabled: bool = False
    evm_rpc_url: str = "http://127.0.0.1:8545"
    evm_chain_id: int = 31337
    evm_confirmations: int = Field(default=12, ge=1)
    evm_mnemonic: SecretStr = SecretStr(DEV_MNEMONIC)
    evm_min_deposit: int = 10**16  # 0.01 ETH
    evm_max_deposit: int = 1_000 * 10**18
    evm_max_fee_per_gas_cap: int = 500 * 10**9  # refuse to pay more than 500 gwei
    # ERC-20 tokens mixed on that chain (JSON list of TokenSettings), enabled with it.
    evm_tokens: list[TokenSettings] = Field(default_factory=list)

    # Bitcoin (any node speaking Bitcoin Core's JSON-RPC; bcoin regtest in development)
    bitcoin_enabled: bool = False
    bitcoin_rpc_url: str = "http://127.0.0.1:18443"
    bitcoin_rpc_user: str | None = None
    bitcoin_rpc_password: SecretStr | None = None
    bitcoin_network: Literal["mainnet", "testnet", "signet", "regtest"] = "regtest"
    bitcoin_confirmations: int = Field(default=6, ge=1)
    # BIP-39 seed of deposit keys (m/84'/c'/0'/0/i) and pool/change keys (m/84'/c'/0'/1/j).
    bitcoin_mnemonic: SecretStr = SecretStr(DEV_MNEMONIC)
    bitcoin_min_deposit: int = 100_000  # 0.001 BTC in satoshi
    bitcoin_max_deposit: int = 100 * 100_000_000
    bitcoin_fallback_fee_rate: int = Field(default=10, ge=1)  # sat/vB when the node has no estimate
    bitcoin_max_fee_rate: int = Field(default=500, ge=1)  # sat/vB, never pay more

    # Who holds the ETH and BTC keys (mixhouse.keys): "software" derives them in process from
    # the mnemonics above; "pkcs11" generates each key inside a PKCS#11 token (an HSM; SoftHSM2
    # in tests), where it stays: the mnemonics are then unused. The PIN is best given as
    # MIXHOUSE_PKCS11_PIN_FILE. Keys are labelled pkcs11_label_prefix + their BIP-32 path.
    signer: Literal["software", "pkcs11"] = "software"
    pkcs11_module: str | None = None  # the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_label_prefix: str = "mixhouse/"
    # The software signer's mnemonics encrypted at rest (mixhouse.keys.keystore; created by
    # `mixhouse keys init`). When set, the mnemonics come from this file, not from
    # MIXHOUSE_EVM_MNEMONIC / MIXHOUSE_BITCOIN_MNEMONIC (setting both is refused); the passphrase
    # comes from MIXHOUSE_KEYSTORE_PASSPHRASE_FILE, or is typed at a prompt on a terminal.
    keystore_path: Path | None = None
    keystore_passphrase: SecretStr | None = None
    # With MIXHOUSE_SIGNER=pkcs11, each API process keeps this many deposit keys per asset
    # pre-generated in the token (mixhouse.keys.buffer; a token makes keys slowly: SoftHSM2 ~7/s),
    # checked every key_buffer_interval_seconds; 0 turns the buffer off (keys made at issue).
    key_buffer_size: int = Field(default=100, ge=0, le=100_000)
    key_buffer_interval_seconds: float = Field(default=5.0, gt=0)
    # With the buffer empty, a new mix's key is made at issue: the token gets this long before
    # the mix is refused with a 503 and Retry-After (nothing created), instead of the request
    # hanging on a slow or hung token with the asset's key counter row-locked.
    key_issue_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # Workers
    scan_interval_seconds: int = Field(default=5, ge=1)
    # The one reorg policy of the scanning engine (mixhouse.watch): a watcher rewinds up to this
    # many blocks to the fork; a reorg proven deeper stops the watchers it reaches, with an
    # audited operator alert (mixhouse_watch_stopped), instead of guessing where the chains met.
    # At least every chain's confirmation depth: a deeper reorg can undo accepted deposits.
    reorg_max_depth: int = Field(default=24, ge=1, le=10_000)
    reconcile_interval_seconds: int = Field(default=30, ge=1)
    # Signed checkpoints of the audit chain head (mixhouse.audit_anchor), written by the worker
    # every interval when both the key (32 bytes hex) and the directory are set.
    audit_checkpoint_key: SecretStr | None = None
    audit_checkpoint_dir: Path | None = None
    audit_checkpoint_interval_seconds: int = Field(default=600, ge=1)
    wallet_sync_interval_seconds: int = Field(default=30, ge=1)
    # Where wallet sync reads Bitcoin history: the operator's node (bitcoin_rpc_url), or a
    # provider API for deployments without one.
    wallet_btc_source: Literal["node", "esplora", "blockchain.info"] = "node"
    wallet_esplora_url: str = "https://blockstream.info/api"
    wallet_blockchain_info_url: str = "https://blockchain.info"
    worker_concurrency: int = Field(default=8, ge=1)
    job_polling_interval_seconds: float = Field(default=1.0, gt=0)
    # A worker that sent no heartbeat for this long is dead: its jobs are retried elsewhere.
    worker_heartbeat_seconds: float = Field(default=2.0, gt=0)
    worker_stalled_after_seconds: float = Field(default=30.0, gt=0)

    # Screening: extra newline-separated addresses to refuse, on top of the OFAC lists.
    denylist_file: Path | None = None

    # Web pages (mixhouse.web): per asset, a block explorer's transaction page with ``{txid}``
    # where the txid goes, e.g. {"BTC": "https://mempool.space/tx/{txid}"} (JSON in the env).
    explorer_tx_urls: dict[str, str] = Field(default_factory=dict)
    # Operator sessions of the admin dashboard expire this long after login.
    admin_session_seconds: int = Field(default=8 * 3600, ge=60)

    def assets(self) -> AssetRegistry:
        """The assets this deployment knows: the built-in ones and the configured tokens
        (whether or not their chain is enabled: see :meth:`enabled_assets`)."""
        return AssetRegistry(token.info() for token in self.evm_tokens)

    def enabled_assets(self) -> list[Asset]:
        """The assets this deployment mixes, in a stable order: Jobcoin, ETH and its tokens, BTC."""
        enabled: list[Asset] = []
        if self.jobcoin_enabled:
            enabled.append(Asset.JOBCOIN)
        if self.evm_enabled:
            enabled.append(Asset.ETH)
            enabled.extend(Asset(token.symbol) for token in self.evm_tokens)
        if self.bitcoin_enabled:
            enabled.append(Asset.BTC)
        return enabled

    def deposit_limits(self, asset: Asset | str) -> tuple[int, int]:
        """``(min_deposit, max_deposit)`` of ``asset`` in its base units.

        Raises:
            ConfigError: ``asset`` is not an asset of this deployment.
        """
        code = str(asset)
        if code == Asset.ETH:
            return self.evm_min_deposit, self.evm_max_deposit
        if code == Asset.BTC:
            return self.bitcoin_min_deposit, self.bitcoin_max_deposit
        if code == Asset.JOBCOIN:
            return self.jobcoin_min_deposit, self.jobcoin_max_deposit
        for token in self.evm_tokens:
            if token.symbol == code:
                return token.min_deposit, token.max_deposit
        raise ConfigError(f"asset {code!r} is not configured")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        symbols = [token.symbol for token in self.evm_tokens]
        if len(set(symbols)) != len(symbols) or {"JOBCOIN", "ETH", "BTC"} & set(symbols):
            raise ConfigError("MIXHOUSE_EVM_TOKENS: each token needs its own symbol, not a built-in asset's")
        for token in self.evm_tokens:
            if token.min_deposit > token.max_deposit:
                raise ConfigError(f"MIXHOUSE_EVM_TOKENS: {token.symbol}'s min_deposit exceeds its max_deposit")
        if self.fee_min_bps > self.fee_max_bps:
            raise ConfigError("fee_min_bps must not exceed fee_max_bps")
        if self.default_delay_min_seconds > self.default_delay_max_seconds:
            raise ConfigError("default_delay_min_seconds must not exceed default_delay_max_seconds")
        if self.signer == "pkcs11":
            for name in ("pkcs11_module", "pkcs11_token_label", "pkcs11_pin"):
                if getattr(self, name) is None:
                    raise ConfigError(f"MIXHOUSE_SIGNER=pkcs11 needs {ENV_PREFIX}{name.upper()}")
        if self.keystore_path is not None:
            for name in ("evm_mnemonic", "bitcoin_mnemonic"):
                if getattr(self, name).get_secret_value() != DEV_MNEMONIC:
                    raise ConfigError(
                        f"set {ENV_PREFIX}KEYSTORE_PATH or {ENV_PREFIX}{name.upper()}, not both: "
                        "with a keystore the mnemonics come from it"
                    )
        if self.environment == "production":
            self._check_production_secrets()
            if self.database_url is None:
                raise ConfigError("set MIXHOUSE_DATABASE_URL: production runs on a managed PostgreSQL server")
        return self

    def _check_production_secrets(self) -> None:
        """Refuse development defaults, short keys and unusable mnemonics.

        Raises:
            ConfigError: naming the first offending setting (its variable), never its value.
        """
        keys: list[tuple[str, SecretStr | None, str | None]] = [
            ("admin_api_key", self.admin_api_key, DEV_ADMIN_KEY),
            ("audit_checkpoint_key", self.audit_checkpoint_key, None),
        ]
        if self.jobcoin_enabled:
            keys.append(("jobcoin_address_secret", self.jobcoin_address_secret, DEV_ADDRESS_SECRET))
        for name, secret, default in keys:
            if secret is None:
                continue
            variable = f"{ENV_PREFIX}{name.upper()}"
            value = secret.get_secret_value()
            if value == default:
                raise ConfigError(f"set {variable}: the development value is refused in production")
            if len(value) < MIN_PRODUCTION_KEY_CHARS:
                raise ConfigError(
                    f"{variable} is too short for production: give at least {MIN_PRODUCTION_KEY_CHARS} "
                    "random characters (e.g. `openssl rand -hex 32`)"
                )
        password = self.bitcoin_rpc_password
        if (
            self.bitcoin_enabled
            and password is not None
            and len(password.get_secret_value()) < MIN_PRODUCTION_PASSWORD_CHARS
        ):
            raise ConfigError(
                f"{ENV_PREFIX}BITCOIN_RPC_PASSWORD is too short for production: "
                f"at least {MIN_PRODUCTION_PASSWORD_CHARS} characters"
            )
        passphrase = self.keystore_passphrase
        if passphrase is not None and len(passphrase.get_secret_value()) < MIN_PRODUCTION_PASSPHRASE_CHARS:
            raise ConfigError(
                f"{ENV_PREFIX}KEYSTORE_PASSPHRASE is too short for production: "
                f"at least {MIN_PRODUCTION_PASSPHRASE_CHARS} characters"
            )
        mnemonics = []
        # With an HSM the mnemonics are not used, with a keystore they are not these (the
        # keystore is checked when it is opened): nothing to refuse.
        from_env = self.signer == "software" and self.keystore_path is None
        if self.evm_enabled and from_env:
            mnemonics.append(("evm_mnemonic", self.evm_mnemonic))
        if self.bitcoin_enabled and from_env:
            mnemonics.append(("bitcoin_mnemonic", self.bitcoin_mnemonic))
        for name, secret in mnemonics:
            variable = f"{ENV_PREFIX}{name.upper()}"
            words = " ".join(secret.get_secret_value().split())
            if words == DEV_MNEMONIC:
                raise ConfigError(f"set {variable}: the public development mnemonic is refused in production")
            if not bip39.mnemonic_is_valid(words):
                raise ConfigError(f"{variable} is not a valid BIP-39 phrase (words or checksum)")
