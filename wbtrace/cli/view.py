"""`wbtrace view`: the offline viewer, as one self-contained HTML file or served on 127.0.0.1."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from wbtrace.cli.app import main
from wbtrace.cli.options import step_options
from wbtrace.errors import BadInputError
from wbtrace.steps import StepSelection


@main.command()
@click.argument("trace_dir", metavar="SOURCE")
@step_options(default="the latest steps within ~4.5M tokens (all steps with --serve)")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: report.html in the current directory].")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Entropy threshold in nats for forking tokens [default: the trace's, 0.672].")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a web browser.")
@click.option("--serve", is_flag=True, help="Serve on 127.0.0.1 and load steps lazily, big steps a page of "
              "responses at a time (traces too big for one file: a file holds at most ~4.5M tokens).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port for --serve (0 picks a free one).")
@click.option("--follow", is_flag=True,
              help="With --serve: show steps as they are committed (a trace being written), no reload needed.")
@click.option("--compare", "compare", default=None,
              metavar="OTHER_SOURCE", help="A second trace or source for the Compare runs tab.")
def view(trace_dir: str, steps: StepSelection, output: Path | None, threshold: float | None, open_browser: bool,
         serve: bool, port: int, follow: bool, compare: str | None) -> None:
    """Open a trace in a browser: entropy charts, analyses, responses, token heatmaps; no network needed.

    SOURCE is a trace dir, a W&B offline run dir, mlflow://RUN_ID or a W&B run (ENTITY/PROJECT/RUN_ID):
    any but a trace dir is pulled into a cache first ($WBTRACE_CACHE, default ~/.cache/wbtrace), and with
    --follow the new steps are pulled as they appear.

    \b
    Example:
        wbtrace view outputs/demo/entropy_trace -o report.html --open
        wbtrace view outputs/demo/entropy_trace --steps 40:50
        wbtrace view outputs/big_run/entropy_trace --serve
        wbtrace view outputs/live_run/entropy_trace --serve --follow
        wbtrace view outputs/live_run/wandb/offline-run-20261201_101500-abc123 --serve --follow
        wbtrace view runs/a/entropy_trace --compare runs/b/entropy_trace
    """
    from wbtrace.sources.local_copy import local_store
    from wbtrace.viewer import ViewerApp, make_server, write_report

    if follow and not serve:
        raise click.UsageError("--follow needs --serve (a file cannot change once written)")
    store, refresh = local_store(trace_dir, steps)
    trace_dir = store.run_dir
    compare = local_store(compare)[0].run_dir if compare is not None else None
    if not serve:
        out = write_report(trace_dir, output or Path("report.html"), steps=steps, threshold=threshold,
                           compare=compare)
        click.echo(f"Wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        if open_browser:
            webbrowser.open(out.resolve().as_uri())
        return
    app = ViewerApp(trace_dir, steps=steps, threshold=threshold, follow=follow, compare=compare, refresh=refresh)
    try:
        server = make_server(app, "127.0.0.1", port)
    except OSError as e:
        raise BadInputError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); try --port 0") from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    live = ", following new steps" if follow else ""
    click.echo(f"Serving {trace_dir} ({len(app.steps)} steps{live}) on {url}  (Ctrl-C stops)")
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
