"""The records a reviewer reads: ``ledger`` (the chain of requests, re-verified), ``sign`` and ``keygen``."""

from __future__ import annotations

import json
import sys

import click

from .group import main


@main.command("ledger")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--pubkey",
    type=click.Path(),
    help="Ed25519 public key (KEY.pub from `unlearn keygen`): also check every request's signature; the only check "
    "that covers the newest manifest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
def ledger_cmd(run_dir, pubkey, as_json):
    """The chain of unlearning requests behind RUN_DIR (root first): what was forgotten, when, how, and the
    model and data hashes, with every hash re-verified against the files on disk.

    Each run records its parent's manifest hash, so an edit to any earlier request breaks the chain. The newest
    manifest (the head) is protected only by a signature (`unlearn run --sign`, `unlearn sign`): give --pubkey to
    check it; without one the ledger prints the head's hash for you to record elsewhere.

    Exit code 0 when everything matches, 1 when a check fails, 2 when RUN_DIR is not a run folder.
    """
    from .. import api

    result = api.ledger(run_dir, pubkey=pubkey)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_ledger(result)
    if not result["verified"]:
        problems = result["problems"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        click.echo(f"error: verification failed: {problems[0]}{more}", err=True)
        sys.exit(1)


def _short(sha: str | None) -> str:
    return sha[:16] if sha else "-"


def _print_ledger(result: dict) -> None:
    """One section per request, root first: what, when, how, the hashes and whether they verified."""
    from rich.console import Console
    from rich.table import Table

    from ..runs.ledger import compact_method_config

    table = Table(title=f"unlearning requests behind {result['run_dir']}", title_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("request", overflow="fold")
    table.add_column("forgot / kept", overflow="fold")
    table.add_column("method", overflow="fold")
    table.add_column("sha256", overflow="fold", no_wrap=True)
    table.add_column("ok")
    for i, r in enumerate(result["requests"], 1):
        model, data = r["model"], r["data"]
        table.add_row(
            str(i),
            f"{r['run']}\n{r['created'] or '-'}",
            f"{r['forget_source']}\nkept: {r['retain_source']}",
            f"{r['method']}\n{compact_method_config(r['method'], r['method_config'])}",
            f"model  {_short(model['sha256_before'])}\n    →  {_short(model['sha256_after'])}\n"
            f"forget {_short(data['forget']['sha256_tokens'])}\nretain {_short(data['retain']['sha256_tokens'])}",
            ("yes" if r["verified"] else "NO") + f"\n{r['signature']}",
        )
    Console().print(table)
    n = len(result["requests"])
    if not result["verified"]:
        for problem in result["problems"]:
            click.echo(f"problem: {problem}")
        click.echo(f"verification failed: {len(result['problems'])} problem(s) in {n} request(s)")
        return
    requests = f"{n} request{'s' if n != 1 else ''}"
    head = result["head"]
    if result["signatures_checked"]:
        click.echo(f"verified: {requests}, all hashes match, every signature valid (key id {head['key_id']})")
        return
    click.echo(f"verified: {requests}, all hashes match")
    if head["signed"]:
        click.echo(
            f"the newest request {head['run']} is signed (key id {head['key_id']}): check the signatures with "
            "--pubkey KEY.pub"
        )
    else:
        click.echo(
            f"the newest request {head['run']} is unsigned: nothing protects its manifest from edits. Record its "
            f"manifest sha256 {head['manifest_sha256']} where the run's writers cannot change it, or sign the run "
            "(`unlearn sign RUN_DIR --key KEY`)"
        )


@main.command("sign")
@click.argument("run_dir", type=click.Path())
@click.option("--key", required=True, type=click.Path(), help="Ed25519 private key (from `unlearn keygen`).")
@click.option(
    "--no-verify", is_flag=True, help="Sign even if the folder's files no longer match its manifest (not advised)."
)
def sign_cmd(run_dir, key, no_verify):
    """Sign every file of the finished run folder RUN_DIR (manifest, config, metrics, model, report, audit, ...)
    with an Ed25519 key: writes RUN_DIR/signature.json, replacing an earlier signature.

    Sign after the last command that writes into the folder (`unlearn audit`, `unlearn report`): a file added or
    changed later makes `unlearn ledger --pubkey` fail until the folder is signed again. The folder's files are
    first checked against its manifest; a folder that does not match is refused.
    """
    from .. import api

    record = api.sign(run_dir, key, verify=not no_verify)
    click.echo(
        f"signed {len(record['files'])} files of {run_dir} with key id {record['key_id']}: "
        f"{record['path']} (check with `unlearn ledger {run_dir} --pubkey KEY.pub`)"
    )


@main.command("keygen")
@click.argument("path", type=click.Path())
def keygen_cmd(path):
    """Write a new Ed25519 key pair for signing run folders: the private key to PATH (readable by you only) and
    the public key to PATH.pub (give it to reviewers). Never overwrites a file."""
    from .. import api

    private, public = api.keygen(path)
    click.echo(f"private key: {private} (keep it secret)\npublic key: {public} (give it to reviewers)")
