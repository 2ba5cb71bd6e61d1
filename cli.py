"""The ``workbench`` command: a thin typer app over :mod:`workbench.pipeline.run`.

This is the only module that talks to the terminal. Heavy imports (torch, transformers) happen
inside commands, so ``workbench --help`` answers at once.

Exit codes: 0 no ``fail`` finding, 1 at least one ``fail``, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from workbench.errors import WorkbenchError  # no torch: --help stays instant

app = typer.Typer(
    name="workbench",
    help="Transformer Workbench: look inside decoder-only transformers and find what is wrong.\n\n"
    "Run `workbench diagnose` to check the embedded SmolLM2-135M, or `workbench diagnose CKPT` for "
    "your checkpoint (a transformers folder, a .gguf file or a workbench checkpoint).\n\n"
    "Exit codes: 0 no fail finding, 1 at least one fail, 2 bad input or usage.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
zoo_app = typer.Typer(help="Tiny checkpoints with known pathologies and their healthy twins.",
                      no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(zoo_app, name="zoo")

out = Console()
err = Console(stderr=True)
LOG_EVERY_SECONDS = 30  # without a terminal (CI logs), progress inside a forward at most this often

Checkpoint = Annotated[
    str | None,
    typer.Argument(help="Checkpoint folder, .gguf file or workbench checkpoint; default: the embedded "
                        "SmolLM2-135M-Instruct.", show_default=False),
]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Run profile: a name (default, ci, long) "
                                         "or a TOML file.")]
DeviceOpt = Annotated[str, typer.Option(help="Torch device to run on: cpu, cuda, cuda:1, mps. Not a catalog "
                                              "name such as h100-sxm: that is `workbench kv --device`.")]
DtypeOpt = Annotated[str, typer.Option(help="Compute dtype: float32, bfloat16 or float16.")]
TokensOpt = Annotated[int | None, typer.Option(min=2, max=1_048_576,
                                               help="Main probe length in tokens (default: the profile's); for "
                                                    "extrapolation, the longest probe of the length sweep, "
                                                    "past the profile's cap.")]
PromptOpt = Annotated[str | None, typer.Option(help="Probe on this text instead of the shipped corpus.")]
TextOpt = Annotated[Path | None, typer.Option(help="Probe on the text in this file.")]
OutOpt = Annotated[Path | None, typer.Option(help="Report folder, absent or empty (default: "
                                                   "reports/<model>-<UTC time>).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write into an --out folder that already holds files "
                                                        "(an earlier report there is replaced).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the libraries' warnings and log "
                                                                  "messages (hidden by default).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write report.json to this path.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the status and the report path.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for probe inputs (default: the profile's).")]
BackendOpt = Annotated[str, typer.Option(help="native: the hooked decoder; nnsight: trace the transformers "
                                              "model itself (any architecture transformers loads).")]


def _line(label: str, style: str, message: str) -> None:
    from workbench.report.text import printable

    # Text, not markup: a message may hold "[probes]" or other brackets rich would eat; printable:
    # a path or a token in it may hold escape sequences, which must never reach the terminal raw.
    err.print(Text.assemble((label, style), " ", printable(message)), highlight=False, soft_wrap=True)


def _fail_input(message: str) -> typer.Exit:
    _line("error:", "bold red", message)
    return typer.Exit(2)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _version(value: bool) -> None:
    if value:
        from workbench import __version__

        out.print(f"workbench {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    # The app's help is Typer(help=...); this callback only adds --version.
    return None


@contextmanager
def _library_output(verbose: bool) -> Iterator[None]:
    """Hide the libraries' warnings (torch, transformers, accelerate) and log records below ERROR,
    unless ``verbose``: what the user needs is in the workbench's own messages."""
    if verbose:
        yield
        return
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _run_command(command: str, checkpoint: str | None, profile: str, device: str, dtype: str,
                 tokens: int | None, prompt: str | None, text: Path | None, out_dir: Path | None,
                 json_path: Path | None, quiet: bool, seed: int | None, backend: str = "native",
                 force: bool = False, verbose: bool = False) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    with _library_output(verbose):
        try:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            from workbench.pipeline import run as pipeline
            from workbench.pipeline.preflight import check_options, read_prompt
            from workbench.report.terminal import render
            from workbench.report.text import printable
        except ImportError as error:  # pragma: no cover - broken install
            raise _fail_input(f"cannot import the workbench ({error})") from None
        try:
            device, notes = check_options(device, dtype, out_dir, json_path, force)  # before anything loads
            for note in notes:
                _line("note:", "bold yellow", note)
            prompt_text = read_prompt(text, prompt)
            options = pipeline.RunOptions(command=command, profile=profile, tokens=tokens, prompt=prompt_text,
                                          device=device, dtype=dtype, seed=seed, backend=backend)
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=err, transient=True, disable=quiet or not err.is_terminal) as progress:
                task = progress.add_task("starting", total=None)
                current = {"step": "starting", "logged": time.monotonic()}

                def step(message: str) -> None:
                    current["step"] = printable(message)
                    progress.update(task, description=current["step"])
                    if not err.is_terminal and not quiet:  # logs (CI): one line per step
                        err.print(Text(f"... {current['step']}"), highlight=False, soft_wrap=True)
                        current["logged"] = time.monotonic()

                def layer(tick: Any) -> None:
                    progress.update(task, description=f"{current['step']} \u00b7 {tick.describe()}")
                    # logs: a line when a forward has run half a minute without one
                    if not err.is_terminal and not quiet and time.monotonic() - current["logged"] > LOG_EVERY_SECONDS:
                        err.print(Text(f"... {current['step']}: {tick.describe()}"), highlight=False, soft_wrap=True)
                        current["logged"] = time.monotonic()

                result = pipeline.run(checkpoint, options, progress=step, on_layer=layer)
                report = result.report
                progress.update(task, description="writing the report")
                folder = pipeline.write(result, out_dir, force=force)
            if json_path is not None:
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text((folder / "report.json").read_text(encoding="utf-8"), encoding="utf-8")
        except WorkbenchError as error:
            raise _fail_input(str(error)) from None
        except KeyboardInterrupt:
            err.print("interrupted: no report was written")
            raise typer.Exit(130) from None
    status = report["summary"]["status"]
    if quiet:
        out.print(f"{status} {printable(folder)}", highlight=False, markup=False, soft_wrap=True)
    else:
        render(report, out, folder=folder)
        out.print(Text.assemble("report: ", (printable(folder / "report.html"), "bold")), highlight=False,
                  soft_wrap=True)
    raise typer.Exit(1 if status == "fail" else 0)


ANALYSIS_COMMANDS = {
    "diagnose": "Run every analyzer (attention, residual, routing, length, KV memory, timing) and write a report.",
    "attention": "Attention statistics per layer and head: saturation, sink heads, logit scale, patterns.",
    "residual": "Residual stream: write norms per layer, the logit lens, per-position loss.",
    "routing": "MoE routing: load and importance per expert, dead experts, balance loss.",
    "extrapolation": "Loss per position at lengths around the claimed context: where does the model stop coping? "
                     "--tokens N probes up to N tokens.",
    "profile": "Time the forward per op and per layer component; write a TensorBoard and a Perfetto trace.",
}


def _analysis_command(command: str):
    def handler(checkpoint: Checkpoint = None, profile: ProfileOpt = "default", device: DeviceOpt = "cpu",
                dtype: DtypeOpt = "float32", tokens: TokensOpt = None, prompt: PromptOpt = None,
                text: TextOpt = None, out: OutOpt = None, json_path: JsonOpt = None, quiet: QuietOpt = False,
                seed: SeedOpt = None, backend: BackendOpt = "native", force: ForceOpt = False,
                verbose: VerboseOpt = False) -> None:
        _run_command(command, checkpoint, profile, device, dtype, tokens, prompt, text, out, json_path, quiet,
                     seed, backend, force=force, verbose=verbose)

    handler.__doc__ = ANALYSIS_COMMANDS[command]
    handler.__name__ = f"{command}_command"
    return handler


for _name in ANALYSIS_COMMANDS:
    app.command(_name)(_analysis_command(_name))


@app.command()
def kv(
    model: Annotated[str, typer.Argument(help="Architecture profile name (llama-3.1-8b, see `workbench "
                                              "profiles`), checkpoint folder, config.json or .gguf.")],
    device: Annotated[str | None, typer.Option(help="A device [bold]catalog name[/]: h100-sxm, a100-80gb, l4, ... "
                                                    "(see `workbench devices`); not a torch device such as cuda: "
                                                    "nothing runs, memory is planned. Default: the profile's.")] = None,
    engine: Annotated[str | None, typer.Option(help="Serving engine whose rules plan the cache: vllm (its "
                                                    "defaults) or ideal (first principles). Default: vllm.")] = None,
    context: Annotated[int | None, typer.Option(min=1, help="Tokens per request (default: the model's "
                                                            "max_positions).")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Concurrent requests.")] = None,
    tp: Annotated[int | None, typer.Option(min=1, help="Tensor-parallel degree.")] = None,
    kv_dtype: Annotated[str | None, typer.Option(help="KV cache dtype: auto (the model's), fp32, fp16, bf16, fp8; "
                                                      "the ideal engine also int8, int4, q8_0, q4_0.")] = None,
    utilization: Annotated[float | None, typer.Option(help="Fraction of the memory CUDA reports the engine may "
                                                           "use (default: the engine's, vLLM 0.9).")] = None,
    block_size: Annotated[int | None, typer.Option(min=1, help="Paged-KV block size in tokens (default: the "
                                                               "engine's, vLLM 16).")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens per scheduler step (vLLM's "
                                                               "default: 8192 on 70+ GiB devices but A100s, else 2048).")] = None,
    weights_dtype: Annotated[str | None, typer.Option(help="Override the weights' storage type (bf16, fp8, int4, "
                                                           "q4_k, ...); fp8 keeps embeddings and LM head in bf16.")] = None,
    allow_long_context: Annotated[bool, typer.Option("--allow-long-context", help="Plan a context past the "
                                                     "model's max_positions (refused otherwise).")] = False,
    profile: ProfileOpt = "default",
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Plan KV-cache memory without loading weights: how many requests of how many tokens fit on a device,
    as the serving engine (vLLM by default) would allot it."""
    try:
        from workbench.pipeline.kv import kv_report
        from workbench.pipeline.preflight import check_catalog_device

        if device is not None and device.strip():
            check_catalog_device(device)
        result = kv_report(model, device=device, context=context, batch=batch, tp=tp, kv_dtype=kv_dtype,
                           utilization=utilization, block_size=block_size, weights_dtype=weights_dtype,
                           engine=engine, max_num_batched_tokens=max_num_batched_tokens,
                           allow_long_context=allow_long_context, profile=profile)
        document = json.dumps(result["plan"], indent=2, sort_keys=True, allow_nan=False) + "\n"
    except WorkbenchError as error:
        raise _fail_input(str(error)) from None
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(document, encoding="utf-8")
    plan = result["plan"]
    if quiet:
        out.print(f"{'fits' if plan['fits'] else 'does not fit'} risk={plan['risk']} engine={plan['engine']}")
    else:
        _render_kv(result)
    raise typer.Exit(0 if plan["fits"] else 1)


def _render_kv(result: dict[str, Any]) -> None:
    from workbench.report.kv_terminal import kv_renderables

    for renderable in kv_renderables(result):
        out.print(renderable, highlight=False)


@app.command()
def check(
    checkpoint: Checkpoint = None,
    profile: ProfileOpt = "default",
    junitxml: Annotated[Path | None, typer.Option(help="Write JUnit XML here (pytest --junitxml).")] = None,
    verbose: VerboseOpt = False,
    pytest_args: Annotated[list[str] | None, typer.Argument(help="Extra pytest arguments after --.",
                                                            show_default=False)] = None,
) -> None:
    """Run the probes test suite on a checkpoint: one pytest test per finding, fail = test failure."""
    with _library_output(verbose):
        try:
            from workbench.pipeline import check as probes

            probes.check_inputs(checkpoint, profile, junitxml)  # one line, before pytest's banner
        except WorkbenchError as error:
            raise _fail_input(str(error)) from None

    def sink(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    try:
        code, problem = probes.run_probes(
            probes.probes_command(checkpoint, profile, junitxml, verbose, list(pytest_args or [])), sink)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if problem:
        raise _fail_input(problem)
    raise typer.Exit(0 if code == 0 else (1 if code == 1 else 2))


@zoo_app.command("build")
def zoo_build(
    folder: Annotated[Path, typer.Argument(help="Where to write one checkpoint folder per member.")],
    only: Annotated[list[str] | None, typer.Option(help="Build only these members.")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """Train the zoo on CPU (tiny models, about two minutes in all) into FOLDER."""
    from workbench import zoo

    names = list(only) if only else list(zoo.MEMBERS)
    unknown = [n for n in names if n not in zoo.MEMBERS]
    if unknown:
        raise _fail_input(f"unknown zoo member {unknown[0]!r}; members: {', '.join(zoo.MEMBERS)}")
    with err.status("training") as status:
        paths = zoo.build_all(folder, names=names, seed=seed,
                              progress=lambda message: status.update(str(message)))
    for name, path in paths.items():
        out.print(Text.assemble(f"{name:20s} {path}  ", (zoo.MEMBERS[name].description, "dim")),
                  highlight=False)


@zoo_app.command("list")
def zoo_list(
    details: Annotated[bool, typer.Option("--details", "-d",
                                          help="Also print how each member was made and what was measured on it.")] = False,
) -> None:
    """List the zoo members: the verdict each must get, from which check, where, and its twin."""
    from workbench import zoo
    from workbench.report.zoo_terminal import zoo_tables

    for table in zoo_tables(zoo.MEMBERS):
        out.print(table, highlight=False)
        out.print()
    if not details:
        out.print("[dim]--details: how each member was made and what was measured on it[/]", highlight=False)
        return
    for name, spec in zoo.MEMBERS.items():
        out.print(f"\n[bold]{name}[/]: {spec.description}", highlight=False)


@app.command()
def devices() -> None:
    """List the device catalog used by `workbench kv` and the KV analyzer (`--device` takes these names)."""
    from workbench.report.kv_terminal import devices_renderables

    for renderable in devices_renderables():
        out.print(renderable, highlight=False)


@app.command()
def profiles() -> None:
    """List the run profiles and the architecture profiles that ship with the workbench."""
    from workbench.settings import get_architecture_profile, list_architectures, list_profiles, load_profile

    out.print("[bold]Run profiles[/] (--profile NAME):")
    for name in list_profiles():
        out.print(f"  {name:10s} {load_profile(name).description}", highlight=False)
    out.print("[bold]Architecture profiles[/] (workbench kv NAME):")
    for name in list_architectures():
        arch = get_architecture_profile(name)
        out.print(f"  {name:16s} {arch.hf_id or ''}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
