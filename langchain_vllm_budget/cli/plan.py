"""The ``vllm-budget plan`` and ``vllm-budget profiles`` commands.

They print what :mod:`langchain_vllm_budget.serving` computes; the arithmetic lives there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from langchain_vllm_budget.serving.docker import (
    DEFAULT_REPLICAS,
    DOCKER_FILES,
    LANGGRAPH_JSON,
    compose_up_command,
    render_docker_files,
    replica_layouts,
)
from langchain_vllm_budget.serving.planner import (
    GIB,
    KVCachePlan,
    PlannerError,
    checkpoint_size_gib,
    load_model_config,
)
from langchain_vllm_budget.serving.profiles import (
    LAYOUTS,
    PROFILES,
    ServerProfile,
    choose_layout,
)

__all__ = ["plan_command", "profiles_app"]

profiles_app = typer.Typer(help="The built-in vLLM server profiles and the docker/ files.")

DEFAULT_GPU_MEMORY_GIB = PROFILES["long-window"].gpu_memory_gib
"""The GPU the built-in profiles are tuned for (the seed's 12 GB RTX 3060), in GiB."""

_console = Console()
_errors = Console(stderr=True)


def _gib(value: int) -> str:
    return f"{value / GIB:.3f} GiB"


def _plan_table(plan: KVCachePlan, title: str) -> Table:
    table = Table("", "value", title=title, show_header=False)
    shape = plan.model
    table.add_row(
        "model",
        f"{shape.num_layers} layers, {shape.num_kv_heads} KV heads "
        f"({plan.kv_heads_per_gpu} per GPU), head dim {shape.head_dim}",
    )
    follows = " = the weights' dtype" if plan.kv_cache_dtype == "auto" else ""
    table.add_row(
        "KV cache dtype", f"{plan.kv_cache_dtype}{follows} ({plan.kv_dtype_bytes} B/element)"
    )
    table.add_row(
        "bytes per token", f"{plan.bytes_per_token:,} B ({plan.bytes_per_token / 1024:g} KiB)"
    )
    if plan.gpu_memory_gib is not None:
        table.add_row(
            "GPU budget",
            f"{plan.gpu_memory_gib:g} GiB x {plan.gpu_memory_utilization:g} - weights "
            f"{plan.weights_gib:g} GiB / {plan.tensor_parallel_size} GPU(s) - overhead "
            f"{plan.overhead_gib:g} GiB (activation peak + non-torch memory)",
        )
    table.add_row("KV cache memory", _gib(plan.kv_cache_memory_bytes))
    table.add_row(
        "blocks",
        f"{plan.num_blocks:,} x {plan.block_size} tokens ({plan.bytes_per_block:,} B each)",
    )
    table.add_row("KV cache size (vLLM's count)", f"{plan.capacity_tokens:,} tokens")
    table.add_row(
        f"one request of {plan.max_model_len:,} tokens",
        f"{plan.blocks_per_request} blocks = {_gib(plan.request_bytes)}",
    )
    table.add_row("maximum concurrency", f"{plan.max_concurrency:.2f}x")
    if plan.max_num_seqs is not None and plan.seqs_bytes is not None:
        verdict = "fits" if plan.fits_max_num_seqs else "does NOT fit at full length"
        table.add_row(
            f"{plan.max_num_seqs} x {plan.max_model_len:,} tokens",
            f"{_gib(plan.seqs_bytes)}: {verdict}",
        )
    table.add_row(
        "recommended",
        f"--max-num-seqs {max(plan.recommended_max_num_seqs, 1)} at this window; "
        f"--max-model-len {plan.recommended_max_model_len:,} for "
        f"{plan.max_num_seqs or 1} sequence(s)",
    )
    table.add_row("vLLM will log", plan.log_line())
    return table


def _source_profile(source: str, model_dtype: str | None) -> tuple[ServerProfile, bool]:
    """A built-in profile, or an ad-hoc one around a model folder / config.json."""
    if source in PROFILES:
        return PROFILES[source], True
    path = Path(source)
    if not path.exists():
        raise typer.BadParameter(
            f"{source!r} is neither a profile ({', '.join(PROFILES)}) nor a model folder or "
            "config.json path."
        )
    config = load_model_config(path)
    folder = path if path.is_dir() else path.parent
    weights: float | None = None
    with contextlib.suppress(PlannerError):
        weights = checkpoint_size_gib(folder)
    max_len = config.get("max_position_embeddings")
    profile = ServerProfile(
        name=folder.name,
        description=f"{folder}",
        model=str(folder),
        model_config=config,
        weights_gib=weights,
        max_model_len=max_len if isinstance(max_len, int) and max_len > 0 else 4096,
        max_num_seqs=1,
        dtype=model_dtype or "auto",
    )
    return profile, False


def plan_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A profile name, a model folder, or a config.json path; none: choose the "
            "layout (compose profile) for --gpu-memory-gib."
        ),
    ] = None,
    kv_cache_dtype: Annotated[
        str | None, typer.Option(help="--kv-cache-dtype: auto, fp16, bf16, fp8, fp32.")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="--max-model-len.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="--max-num-seqs.")] = None,
    gpu_memory_gib: Annotated[
        float | None,
        typer.Option(help="Memory of each GPU, GiB (layout choice: default 12, the profiles')."),
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="--gpu-memory-utilization, in (0, 1].")
    ] = None,
    weights_gib: Annotated[
        float | None, typer.Option(help="Weights of the whole model, GiB (default: files).")
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option(help="--tensor-parallel-size.")
    ] = None,
    kv_cache_gib: Annotated[
        float | None,
        typer.Option(help="Explicit KV cache size per GPU, GiB (VLLM_CPU_KVCACHE_SPACE on CPU)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cuda (block size 16) or cpu (128).")] = "cuda",
    dtype: Annotated[str | None, typer.Option(help="--dtype of the weights.")] = None,
    block_size: Annotated[int | None, typer.Option(help="--block-size.")] = None,
    overhead_gib: Annotated[
        float | None,
        typer.Option(
            help="Activation peak + non-torch memory per GPU, GiB (default: the profile's "
            "measured figure, 1 for other models)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Layout choice: requests the app runs at once (default 1).", min=1),
    ] = None,
    serve: Annotated[
        bool, typer.Option(help="Also print the matching `vllm serve` line(s).")
    ] = False,
    replicas: Annotated[
        int,
        typer.Option(
            help="vLLM replicas behind vllm-router, one GPU of --gpu-memory-gib each: plans "
            "one replica and the total (layout choice: one-server layouts, the concurrency "
            "split over the replicas).",
            min=1,
        ),
    ] = 1,
) -> None:
    """Plan a vLLM KV cache, or (no SOURCE) choose the layout that fits a GPU.

    With no SOURCE it plans every layout (docker compose profile) on one GPU of
    --gpu-memory-gib and says which to run. With a SOURCE it plans that profile or model:
    bytes per token, capacity, concurrency, what fits.
    """
    if source is None:
        single = {
            "--kv-cache-dtype": kv_cache_dtype,
            "--max-model-len": max_model_len,
            "--max-num-seqs": max_num_seqs,
            "--gpu-memory-utilization": gpu_memory_utilization,
            "--weights-gib": weights_gib,
            "--tensor-parallel-size": tensor_parallel_size,
            "--kv-cache-gib": kv_cache_gib,
            "--dtype": dtype,
            "--block-size": block_size,
            "--device": None if device == "cuda" else device,
        }
        given = [name for name, value in single.items() if value is not None]
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)}: for one profile or model, given as SOURCE (e.g. "
                "`vllm-budget plan long-window --max-model-len 8192`), or leave "
                f"{'it' if len(given) == 1 else 'them'} out to choose a layout."
            )
        _choose_layout(
            DEFAULT_GPU_MEMORY_GIB if gpu_memory_gib is None else gpu_memory_gib,
            concurrency=concurrency or 1,
            overhead_gib=overhead_gib,
            serve=serve,
            replicas=replicas,
        )
        return
    if concurrency is not None:
        raise typer.BadParameter(
            "--concurrency chooses a layout (no SOURCE); for one profile use --max-num-seqs."
        )
    try:
        profile, builtin = _source_profile(source, dtype)
        changes: dict[str, Any] = {
            "kv_cache_dtype": kv_cache_dtype,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "gpu_memory_gib": gpu_memory_gib,
            "gpu_memory_utilization": gpu_memory_utilization,
            "weights_gib": weights_gib,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "overhead_gib": overhead_gib,
        }
        profile = profile.with_settings(**{k: v for k, v in changes.items() if v is not None})
        overrides: dict[str, Any] = {"device": device, "block_size": block_size}
        if kv_cache_gib is not None:
            overrides["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
        elif not builtin and gpu_memory_gib is None:
            raise typer.BadParameter(
                "give --gpu-memory-gib (with --weights-gib unless the folder holds the "
                "weights) or --kv-cache-gib"
            )
        plan = profile.plan(**overrides)
    except PlannerError as exc:
        _errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    title = f"KV cache plan: {profile.name}"
    _console.print(_plan_table(plan, title + (" (per replica)" if replicas > 1 else "")))
    if replicas > 1:
        _console.print(_replicas_line(plan, replicas), highlight=False)
    if serve:
        _console.print(profile.shell_command(), markup=False, highlight=False, soft_wrap=True)


def _replicas_line(plan: KVCachePlan, replicas: int) -> str:
    """What ``replicas`` copies of one planned server hold together (one GPU each)."""
    seqs = plan.max_num_seqs or 1
    return (
        f"{replicas} replicas, one GPU each: {replicas} x {seqs} = "
        f"{replicas * seqs} requests at once, {replicas} x "
        f"{plan.capacity_tokens:,} = {replicas * plan.capacity_tokens:,} KV-cache tokens; "
        "each thread's prefix is cached on one replica only (see docs/deployment.md)"
    )


def _kv_verdict(plan: KVCachePlan) -> str:
    need = (plan.seqs_bytes or 0) / GIB
    have = plan.kv_cache_memory_bytes / GIB
    return f"{plan.max_num_seqs} x {plan.max_model_len:,} need {need:.2f} of {have:.2f} GiB"


def _choose_layout(
    gpu_memory_gib: float,
    *,
    concurrency: int,
    overhead_gib: float | None,
    serve: bool,
    replicas: int = 1,
) -> None:
    """Print every layout planned on the GPU, and the one to run (exit 2 if none fits).

    With ``replicas`` > 1, each replica is planned on its own GPU for its share of the
    concurrency, among the layouts of one server (those that run as replicas).
    """
    per_replica = -(-concurrency // replicas)
    try:
        choice = choose_layout(
            gpu_memory_gib,
            concurrency=per_replica,
            overhead_gib=overhead_gib,
            layouts=replica_layouts() if replicas > 1 else None,
        )
    except PlannerError as exc:
        _errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    table = Table(
        "layout",
        "server (start order)",
        "window x seqs",
        "GPU share",
        "KV cache",
        "verdict",
        title=f"Layouts on one {gpu_memory_gib:g} GiB GPU, {per_replica} request(s) at once "
        + (f"per replica ({replicas} replicas) " if replicas > 1 else "")
        + "(planner estimates: weights + overhead per profile)",
    )
    for fit in choice.fits:
        planned = {profile.name: plan for profile, plan in fit.plans}
        for index, profile in enumerate(fit.layout.servers):
            plan = planned.get(profile.name)
            if plan is None:
                verdict = "does not start"
            elif plan.fits_max_num_seqs:
                verdict = "fits: " + _kv_verdict(plan)
            else:
                verdict = f"{plan.recommended_max_num_seqs} of {plan.max_num_seqs} fit"
            table.add_row(
                fit.layout.name if index == 0 else "",
                profile.name,
                f"{profile.max_model_len:,} x {profile.max_num_seqs}",
                f"{profile.gpu_memory_utilization:g}",
                "-" if plan is None else f"{plan.capacity_tokens:,} tokens",
                verdict,
            )
        table.rows[-1].end_section = True
    _console.print(table)
    chosen = choice.chosen
    for fit in choice.fits:
        if not fit.fits:
            _console.print(
                f"{fit.layout.name} does not fit: {'; '.join(fit.problems)}", highlight=False
            )
    reasons = "; ".join(f"{profile.name} {_kv_verdict(plan)}" for profile, plan in chosen.plans)
    why = "the first layout that fits" if choice.fits[0] is not chosen else "it fits"
    _console.print(f"run {chosen.layout.name!r} ({why}; KV cache: {reasons}):", highlight=False)
    if replicas > 1:
        _console.print(_replicas_line(chosen.plans[0][1], replicas), highlight=False)
        if replicas != DEFAULT_REPLICAS:
            _console.print(
                f"docker/compose.yaml has {DEFAULT_REPLICAS} replicas per profile: render it "
                f"with `vllm-budget profiles render --replicas {replicas}` first",
                highlight=False,
            )
    _console.print(
        compose_up_command(chosen.layout, replicas=replicas),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if serve:
        for profile, _ in chosen.plans:
            _console.print(profile.shell_command(), markup=False, highlight=False, soft_wrap=True)


@profiles_app.command("list")
def profiles_list() -> None:
    """List the built-in profiles."""
    table = Table("name", "model", "window x seqs", "KV dtype", "GPU util", "what")
    for profile in PROFILES.values():
        table.add_row(
            profile.name,
            profile.model,
            f"{profile.max_model_len:,} x {profile.max_num_seqs}",
            profile.kv_cache_dtype,
            f"{profile.gpu_memory_utilization:g}",
            profile.description,
        )
    _console.print(table)
    layouts = Table("layout", "servers (start order)", "what", title="layouts (compose profiles)")
    for layout in LAYOUTS.values():
        names = " then ".join(profile.name for profile in layout.servers)
        layouts.add_row(layout.name, names, layout.description)
    _console.print(layouts)


@profiles_app.command("render")
def profiles_render(
    output_dir: Annotated[Path, typer.Option(help="Where to write the files.")] = Path("docker"),
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 if the files differ from the profiles.")
    ] = False,
    replicas: Annotated[
        int, typer.Option(help="vLLM replicas (GPUs) of the <layout>-replicas profiles.", min=2)
    ] = DEFAULT_REPLICAS,
) -> None:
    """Write docker/ (Dockerfiles, compose.yaml, .env.example) from the profiles."""
    if not LANGGRAPH_JSON.is_file():  # an installed package: the images need the sources
        _errors.print(
            "profiles render writes the docker/ folder of a clone of the repository: its "
            "images copy the package, graphs/ and langgraph.json from there. Run it in a "
            "clone (`pip install -e .`); an installed package has no such folder.",
            markup=False,
        )
        raise typer.Exit(2)
    rendered = render_docker_files(replicas=replicas)
    stale = [
        name
        for name in DOCKER_FILES
        if not (output_dir / name).is_file() or (output_dir / name).read_text() != rendered[name]
    ]
    if check:
        if stale:
            _errors.print(
                f"out of date in {output_dir}: {', '.join(stale)}; run "
                "`vllm-budget profiles render`",
                markup=False,
            )
            raise typer.Exit(1)
        _console.print(f"{output_dir}: up to date")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in DOCKER_FILES:
        (output_dir / name).write_text(rendered[name])
    _console.print(f"wrote {', '.join(DOCKER_FILES)} to {output_dir}")
