"""Server configuration: SGLang's flags, parsed and validated up front.

``ServerArgs`` accepts the flags of SGLang's PD docs unchanged (so commands copy
over), plus pdcore's own. ``validate`` fails fast with a ``ConfigError`` naming
the flag; checks that need installed plugins (device, attention and transfer
backends) go through the registry so errors list what is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from pdcore.body_limit import DEFAULT_MAX_PAYLOAD_SIZE
from pdcore.envs import local_prefill_threshold
from pdcore.errors import ConfigError
from pdcore.registry import Registry

DISAGGREGATION_MODES = ("null", "prefill", "decode")
DTYPES = ("auto", "float32", "float16", "bfloat16")
MOE_A2A_BACKENDS = ("none", "deepep")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclass
class ServerArgs:
    # model
    model_path: str | None = None
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    strict_model_name: bool = False
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    dtype: str = "auto"
    context_length: int | None = None
    load_format: str = "auto"
    # HTTP
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = field(default=None, repr=False)  # never in a repr or a log
    log_level: str = "info"
    skip_server_warmup: bool = False
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE  # bytes of one request body
    # hardware
    device: str = "auto"
    base_gpu_id: int = 0
    gpu_id_step: int = 1
    attention_backend: str | None = None
    prefill_attention_backend: str | None = None
    decode_attention_backend: str | None = None
    # memory and scheduling
    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    page_size: int = 16
    chunked_prefill_size: int = 2048
    max_running_requests: int | None = None
    cuda_graph_max_bs: int | None = None
    disable_cuda_graph: bool = False
    disable_overlap_schedule: bool = False
    enable_fused_kernels: bool = True
    max_prefill_tokens: int = 16384
    random_seed: int = 0
    # parallelism
    tp_size: int = 1
    dp_size: int = 1
    enable_dp_attention: bool = False
    dist_init_addr: str | None = None
    nnodes: int = 1
    node_rank: int = 0
    moe_a2a_backend: str = "none"
    # PD disaggregation
    disaggregation_mode: str = "null"
    disaggregation_transfer_backend: str = "mooncake"
    disaggregation_ib_device: str | None = None
    disaggregation_bootstrap_port: int = 8998
    disaggregation_decode_tp: int | None = None
    disaggregation_decode_dp: int | None = None
    disaggregation_secret: str | None = field(default=None, repr=False)
    # None: not given ($PDCORE_DISAGGREGATION_LOCAL_PREFILL_THRESHOLD on decode, else 0)
    disaggregation_local_prefill_threshold: int | None = None
    # Each plugin's options, by plugin key ("distribution:entry point"): its own flags
    # (pdcore_add_cli_args, or their PDCORE_/SGLANG_ variables) after pdcore_configure.
    # Plain data only (pdcore.plugin_options): it travels to every engine process.
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # All plugin flags' values in one dict: as parsed, then (after validate) as
    # configured; what pdcore_configure's namespace carries besides the server's flags.
    plugin_args: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        d = ServerArgs
        g = parser.add_argument_group("model")
        g.add_argument(
            "--model-path",
            "--model",
            dest="model_path",
            default=d.model_path,
            help="HF folder or .gguf file (default: the embedded SmolLM2-135M)",
        )
        g.add_argument("--tokenizer-path", default=d.tokenizer_path)
        g.add_argument(
            "--served-model-name",
            default=d.served_model_name,
            help="the model's name in /v1/models, /model_info, /server_info and responses "
            "(default: --model-path as given, as in SGLang)",
        )
        g.add_argument(
            "--strict-model-name",
            action="store_true",
            help="answer 404 to an OpenAI request whose 'model' is not --served-model-name, "
            "the model path, its folder name or 'default' (default: serve any name, as "
            "SGLang does)",
        )
        g.add_argument(
            "--skip-tokenizer-init",
            action="store_true",
            help="load no tokenizer: /generate takes 'input_ids' and returns 'output_ids' "
            "without text; text prompts, chat/completions, stop strings and "
            "/tokenize and /detokenize answer 400",
        )
        g.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="accepted for SGLang compatibility and has no effect: pdcore never runs "
            "code from the model folder. Only built-in architectures load; a checkpoint "
            "whose architecture needs custom code (config.json auto_map) fails with an "
            "error naming the architecture, with or without this flag",
        )
        g.add_argument("--dtype", default=d.dtype, choices=DTYPES)
        g.add_argument("--context-length", type=int, default=d.context_length)
        g.add_argument("--load-format", default=d.load_format, choices=LOAD_FORMATS)
        g = parser.add_argument_group("HTTP server")
        g.add_argument("--host", default=d.host)
        g.add_argument("--port", type=int, default=d.port)
        g.add_argument(
            "--api-key",
            default=d.api_key,
            help="require 'Authorization: Bearer KEY' on every route but /health, "
            "/health_generate and /metrics",
        )
        g.add_argument("--log-level", default=d.log_level, choices=LOG_LEVELS)
        g.add_argument(
            "--max-payload-size",
            "--max-request-body-bytes",
            dest="max_payload_size",
            type=int,
            default=d.max_payload_size,
            help="largest request body in bytes (sgl-router's flag); a larger one is refused "
            "with 413 before it is read in full (default: 64 MiB)",
        )
        g.add_argument(
            "--skip-server-warmup",
            action="store_true",
            help="serve without first generating one request end to end",
        )
        g = parser.add_argument_group("hardware")
        g.add_argument(
            "--device", default=d.device, help="platform name (cpu, cuda, npu, ...) or auto"
        )
        g.add_argument("--base-gpu-id", type=int, default=d.base_gpu_id)
        g.add_argument(
            "--gpu-id-step",
            type=int,
            default=d.gpu_id_step,
            help="TP rank r of this node uses GPU base-gpu-id + r * step",
        )
        g.add_argument(
            "--attention-backend",
            default=d.attention_backend,
            help="default: the best available for the device",
        )
        for phase in ("prefill", "decode"):
            g.add_argument(
                f"--{phase}-attention-backend",
                default=getattr(d, f"{phase}_attention_backend"),
                help=f"for {phase} passes only (overrides --attention-backend there); "
                f"default: the best available for {phase}",
            )
        g = parser.add_argument_group("memory and scheduling")
        g.add_argument("--mem-fraction-static", type=float, default=d.mem_fraction_static)
        g.add_argument("--max-total-tokens", type=int, default=d.max_total_tokens)
        g.add_argument("--page-size", type=int, default=d.page_size)
        g.add_argument(
            "--chunked-prefill-size",
            type=int,
            default=d.chunked_prefill_size,
            help="tokens per prefill chunk; -1 disables chunking",
        )
        g.add_argument("--max-running-requests", type=int, default=d.max_running_requests)
        g.add_argument("--max-prefill-tokens", type=int, default=d.max_prefill_tokens)
        g.add_argument("--random-seed", type=int, default=d.random_seed)
        g.add_argument(
            "--cuda-graph-max-bs",
            type=int,
            default=d.cuda_graph_max_bs,
            help="largest decode batch replayed from a captured graph (default: "
            "min(max running requests, 256)); graphs need a graph-safe attention backend",
        )
        g.add_argument(
            "--disable-cuda-graph", action="store_true", help="run decode eagerly on GPUs"
        )
        g.add_argument(
            "--disable-overlap-schedule",
            action="store_true",
            help="wait for each decode step's tokens before launching the next (by default "
            "a GPU decode step from CUDA graphs is launched while the host reads the last "
            "step's tokens)",
        )
        g.add_argument(
            "--disable-fused-kernels",
            dest="enable_fused_kernels",
            action="store_false",
            help="use the torch versions of norms, rotary, SiLU-and-mul and linears everywhere",
        )
        g = parser.add_argument_group("parallelism")
        g.add_argument("--tp-size", "--tp", dest="tp_size", type=int, default=d.tp_size)
        g.add_argument("--dp-size", "--dp", dest="dp_size", type=int, default=d.dp_size)
        g.add_argument("--enable-dp-attention", action="store_true")
        g.add_argument("--dist-init-addr", default=d.dist_init_addr, help="HOST:PORT")
        g.add_argument("--nnodes", type=int, default=d.nnodes)
        g.add_argument("--node-rank", type=int, default=d.node_rank)
        g.add_argument("--moe-a2a-backend", default=d.moe_a2a_backend, choices=MOE_A2A_BACKENDS)
        g = parser.add_argument_group("PD disaggregation")
        g.add_argument(
            "--disaggregation-mode", default=d.disaggregation_mode, choices=DISAGGREGATION_MODES
        )
        g.add_argument(
            "--disaggregation-transfer-backend",
            default=d.disaggregation_transfer_backend,
            help="transfer engine plugin: mooncake, nixl, ascend, ... ('fake' moves "
            "nothing and its outputs are not real: testing only; it also lets clients "
            "send SGLang's fake bootstrap_host 2.2.2.2, which other backends refuse)",
        )
        g.add_argument(
            "--disaggregation-ib-device",
            default=d.disaggregation_ib_device,
            help="RDMA device name(s), comma-separated",
        )
        g.add_argument(
            "--disaggregation-bootstrap-port", type=int, default=d.disaggregation_bootstrap_port
        )
        g.add_argument("--disaggregation-decode-tp", type=int, default=d.disaggregation_decode_tp)
        g.add_argument("--disaggregation-decode-dp", type=int, default=d.disaggregation_decode_dp)
        g.add_argument(
            "--disaggregation-secret",
            default=d.disaggregation_secret,
            help="shared secret that authenticates (HMAC) every PD control message and, "
            "under --tp-size > 1, every rank joining at --dist-init-addr and every step "
            "plan between ranks; the same on prefill and decode and on every node "
            "(default: $PDCORE_DISAGGREGATION_SECRET or $SGLANG_DISAGGREGATION_SECRET; "
            "unset: unauthenticated, as in SGLang)",
        )
        g.add_argument(
            "--disaggregation-local-prefill-threshold",
            type=int,
            default=d.disaggregation_local_prefill_threshold,
            metavar="N",
            help="decode only: prefill a request here instead of receiving its KV when at "
            "most N of its prompt tokens miss decode's prefix cache; prefill drops the "
            "room (default: $PDCORE_DISAGGREGATION_LOCAL_PREFILL_THRESHOLD, else 0: off)",
        )

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)} - {"plugin_args", "plugin_options"}
        values = vars(args)
        own = {k: values[k] for k in names if k in values}
        extra = {k: v for k, v in values.items() if k not in names and not k.startswith("_")}
        return cls(**own, plugin_args=extra)

    @property
    def local_prefill_threshold(self) -> int:
        """The effective ``--disaggregation-local-prefill-threshold``: the flag, else (on
        decode) the environment, else 0. Only a decode server prefills locally."""
        if self.disaggregation_local_prefill_threshold is not None:
            return self.disaggregation_local_prefill_threshold
        if self.disaggregation_mode != "decode":
            return 0
        return local_prefill_threshold()

    @property
    def dp_attention_groups(self) -> int:
        """Engines the TP ranks form: ``--dp-size`` under ``--enable-dp-attention`` (each
        DP group of ``tp_size // dp_size`` ranks leads its own), else 1."""
        return self.dp_size if self.enable_dp_attention else 1

    # ---- validation ------------------------------------------------------------

    def validate(self, registry: Registry | None = None) -> None:
        """Raise ``ConfigError`` naming the first offending flag."""
        self._validate_ranges()
        self._validate_parallelism()
        self._validate_local_prefill()
        if registry is not None:
            self._validate_plugins(registry)

    def _validate_ranges(self) -> None:
        for flag, value in (
            ("--port", self.port),
            ("--disaggregation-bootstrap-port", self.disaggregation_bootstrap_port),
        ):
            if not 1 <= value <= 65535:
                raise ConfigError(flag, f"must be a TCP port in 1..65535, got {value}")
        if self.disaggregation_mode != "null" and self.port == self.disaggregation_bootstrap_port:
            raise ConfigError(
                "--disaggregation-bootstrap-port", f"must differ from --port ({self.port})"
            )
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            raise ConfigError(
                "--mem-fraction-static",
                f"must be between 0 and 1 (exclusive), got {self.mem_fraction_static}",
            )
        positive = {
            "--page-size": self.page_size,
            "--max-total-tokens": self.max_total_tokens,
            "--max-running-requests": self.max_running_requests,
            "--cuda-graph-max-bs": self.cuda_graph_max_bs,
            "--max-prefill-tokens": self.max_prefill_tokens,
            "--max-payload-size": self.max_payload_size,
            "--context-length": self.context_length,
            "--tp-size": self.tp_size,
            "--dp-size": self.dp_size,
            "--nnodes": self.nnodes,
            "--disaggregation-decode-tp": self.disaggregation_decode_tp,
            "--disaggregation-decode-dp": self.disaggregation_decode_dp,
        }
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise ConfigError(flag, f"must be a positive integer, got {value}")
        if self.chunked_prefill_size != -1 and self.chunked_prefill_size < 1:
            raise ConfigError(
                "--chunked-prefill-size",
                f"must be positive or -1 (no chunking), got {self.chunked_prefill_size}",
            )
        if self.chunked_prefill_size != -1 and self.chunked_prefill_size < self.page_size:
            raise ConfigError(
                "--chunked-prefill-size",
                f"must be at least --page-size ({self.page_size}), got {self.chunked_prefill_size}",
            )
        if self.max_total_tokens is not None and self.max_total_tokens < self.page_size:
            raise ConfigError(
                "--max-total-tokens", f"must hold at least one page (--page-size {self.page_size})"
            )
        if self.base_gpu_id < 0:
            raise ConfigError("--base-gpu-id", f"must be >= 0, got {self.base_gpu_id}")
        if self.gpu_id_step < 1:
            raise ConfigError("--gpu-id-step", f"must be >= 1, got {self.gpu_id_step}")
        if self.model_path is not None and not self.model_path.strip():
            raise ConfigError("--model-path", "must not be empty")

    def _validate_parallelism(self) -> None:
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(
                "--node-rank",
                f"{self.node_rank} is out of range for --nnodes {self.nnodes} "
                f"(expected 0..{self.nnodes - 1})",
            )
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ConfigError(
                "--dist-init-addr", f"is required with --nnodes {self.nnodes} (HOST:PORT of node 0)"
            )
        if self.dist_init_addr is not None:
            _parse_host_port(self.dist_init_addr, "--dist-init-addr")
        if self.tp_size % self.nnodes:
            raise ConfigError(
                "--tp-size", f"{self.tp_size} must be divisible by --nnodes {self.nnodes}"
            )
        if self.enable_dp_attention:
            if self.tp_size % self.dp_size:
                raise ConfigError(
                    "--dp-size",
                    f"{self.dp_size} must divide --tp-size {self.tp_size} "
                    "under --enable-dp-attention",
                )
        elif self.dp_size > 1 and self.nnodes > 1:
            raise ConfigError(
                "--dp-size",
                "data-parallel replicas across nodes need --enable-dp-attention; "
                "run one server per node and put a router in front instead",
            )
        if self.moe_a2a_backend == "deepep" and importlib.util.find_spec("deep_ep") is None:
            raise ConfigError(
                "--moe-a2a-backend",
                "deepep needs the DeepEP library (import deep_ep), which is not "
                "installed; use --moe-a2a-backend none",
            )
        if self.moe_a2a_backend == "deepep":
            logging.getLogger(__name__).warning(
                "--moe-a2a-backend deepep: DeepEP dispatch/combine is not implemented; "
                "MoE layers use the all-reduce path"
            )
        if self.disaggregation_mode == "null" and (
            self.disaggregation_decode_tp or self.disaggregation_decode_dp
        ):
            raise ConfigError(
                "--disaggregation-decode-tp", "only applies with --disaggregation-mode prefill"
            )

    def _validate_local_prefill(self) -> None:
        """A negative threshold is a typo; on a prefill or null server one would be
        silently ignored, which hides a deployment mistake."""
        flag = "--disaggregation-local-prefill-threshold"
        n = self.disaggregation_local_prefill_threshold
        if n is None:
            return
        if n < 0:
            raise ConfigError(flag, f"must be >= 0 (0 turns it off), got {n}")
        if n > 0 and self.disaggregation_mode != "decode":
            raise ConfigError(
                flag,
                "only applies with --disaggregation-mode decode "
                f"(this server is --disaggregation-mode {self.disaggregation_mode})",
            )

    def _validate_plugins(self, registry: Registry) -> None:
        platform = registry.select_platform(self.device, "--device")
        if self.dtype != "auto" and self.dtype not in platform.supported_dtypes():
            raise ConfigError(
                "--dtype",
                f"{self.dtype} is not supported on {platform.name} "
                f"(supported: {', '.join(platform.supported_dtypes())})",
            )
        dtype = None if self.dtype == "auto" else self.dtype
        phases = self._attention_phases(registry, platform, dtype=dtype)
        for attention in {a.name: a for a in phases}.values():
            if not attention.kv_layout.accepts_page_size(self.page_size):
                sizes = ", ".join(map(str, attention.kv_layout.page_sizes))
                raise ConfigError(
                    "--page-size",
                    f"attention backend {attention.name!r} needs "
                    f"--page-size in {{{sizes}}}, got {self.page_size}",
                )
        if self.disaggregation_mode != "null" and self.disaggregation_transfer_backend != "fake":
            # "fake" is no transfer engine: rooms succeed without a peer (warm-up, tests).
            transfer = registry.require(
                "transfer",
                self.disaggregation_transfer_backend,
                "--disaggregation-transfer-backend",
            )
            if platform.memory_kind not in transfer.memory_kinds:
                kinds = ", ".join(k.value for k in transfer.memory_kinds)
                raise ConfigError(
                    "--disaggregation-transfer-backend",
                    f"{transfer.name!r} cannot move {platform.memory_kind.value} "
                    f"memory of platform {platform.name!r} (it moves: {kinds})",
                )
        own = {k: v for k, v in dataclasses.asdict(self).items() if k != "plugin_options"}
        self.plugin_options = registry.configure(argparse.Namespace(**own, **self.plugin_args))
        self.plugin_args = {k: v for opts in self.plugin_options.values() for k, v in opts.items()}

    def _attention_phases(self, registry: Registry, platform, model=None, dtype=None):
        """(prefill, decode) backends; ``model``: the KV spec, where known."""
        return registry.select_attention_phases(
            platform,
            self.attention_backend,
            self.prefill_attention_backend,
            self.decode_attention_backend,
            getattr(model, "kind", None),
            dtype,
            getattr(model, "head_dim", None),
        )

    def _model_kv_spec(self):
        """The model's KV spec (kind "mha"/"mla", head_dim) from its config
        (metadata only), None if unreadable."""
        try:
            from pdcore.model.loader import load_model_config

            return load_model_config(self.model_path).kv_cache_spec()
        except Exception:
            return None

    def resolved(self, registry: Registry) -> dict:
        """The effective choices, for ``--check-config`` and ``/get_server_info``."""
        platform = registry.select_platform(self.device)
        dtype = self.dtype if self.dtype != "auto" else platform.default_dtype()
        phases = self._attention_phases(registry, platform, self._model_kv_spec(), dtype)
        out = masked(dataclasses.asdict(self))
        out["device"] = platform.name
        out["attention_backend"] = attention_label(*(a.name for a in phases))
        out["prefill_attention_backend"], out["decode_attention_backend"] = (a.name for a in phases)
        out["dtype"] = dtype
        return out


def attention_label(prefill: str, decode: str) -> str:
    """One name for the attention in use: ``flashinfer``, or ``flashinfer+triton``
    (prefill + decode) when the two phases differ."""
    return prefill if prefill == decode else f"{prefill}+{decode}"


SECRET_FIELDS = ("api_key", "disaggregation_secret")


def masked(args: dict) -> dict:
    """``args`` (a ``ServerArgs`` as a dict) with every secret shown as ``***``."""
    return {k: ("***" if v else None) if k in SECRET_FIELDS else v for k, v in args.items()}


def _parse_host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(flag, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)
