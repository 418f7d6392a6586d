"""``m2-code-store``: serve the lookup API, load an export, show the store, stop the embedded Redis.

    m2-code-store serve [--host H] [--port P] [--workers N] [--server granian|gunicorn] [--debug]
    m2-code-store load FILE.csv [BATCHSIZE] [--replace] …   (the same as write_csv_to_redis)
    m2-code-store stats
    m2-code-store stop-embedded
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import redis

from m2_code_store.config import connect, describe_error, embedded_note, open_store, resolve_target
from m2_code_store.embedded import EmbeddedServerError, stop_local_server
from m2_code_store.store import CodeStore
from toolconfig import ConfigError, add_logging_arguments, release
from toolconfig.logs import setup_logging

APP_FACTORY = "m2_code_store.api:create_app"
log = logging.getLogger("m2_code_store")


def server_command(server: str, host: str, port: int, workers: int, threads: int) -> list[str]:
    """The argv that runs the API under a production WSGI server."""
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", APP_FACTORY,
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--blocking-threads", str(threads), "--no-ws", "--log-level", "warning",
        ]
    return [
        sys.executable, "-m", "gunicorn", f"{APP_FACTORY}()", "--bind", f"{host}:{port}",
        "--workers", str(workers), "--threads", str(threads),
        "--limit-request-line", "0",  # 1000 barcodes do not fit gunicorn's default 4094 bytes
        "--access-logfile", "-", "--log-level", "warning",
    ]


def serve(args: argparse.Namespace) -> int:
    """Run the API; check the store's configuration first so a bad one fails here, clearly."""
    try:
        target = resolve_target()
        if target.source == "embedded":
            connect(target).close()  # starts the embedded server once, before the workers fork
    except (ConfigError, EmbeddedServerError) as exc:
        log.error("%s", exc)
        return 2
    if note := embedded_note(target):
        log.warning("%s", note)
        os.environ["M2_STORE"] = "embedded"  # the workers, which have no terminal, resolve the same store
    log.info("serving the M2 customer code API on http://%s:%d (store: %s)", args.host, args.port, target.shown)
    if args.debug:
        from m2_code_store.api import create_app

        create_app().run(host=args.host, port=args.port, debug=True)
        return 0
    argv = server_command(args.server, args.host, args.port, args.workers, args.threads)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - execv does not return


def stats(_: argparse.Namespace) -> int:
    """Print the store's record count and generation as JSON."""
    try:
        target, client = open_store(timeout=5)
        if note := embedded_note(target):
            log.warning("%s", note)
        print(json.dumps({"store": target.shown, **CodeStore(client).stats()}))
    except (ConfigError, EmbeddedServerError) as exc:
        log.error("%s", exc)
        return 2
    except redis.exceptions.RedisError as exc:
        log.error("%s failed: %s", target.shown, describe_error(exc, target))
        return 2
    return 0


def stop_embedded(_: argparse.Namespace) -> int:
    """Stop the embedded local Redis (its data stays in the data directory)."""
    others = ("REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED", "M2_STORE")
    target = resolve_target({**{k: v for k, v in os.environ.items() if k not in others}, "M2_STORE": "embedded"})
    assert target.data_dir is not None  # M2_STORE=embedded resolves to the embedded store
    stopped = stop_local_server(target.data_dir)
    print(f"{'stopped' if stopped else 'not running:'} the embedded Redis in {target.data_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2-code-store``."""
    from m2_code_store import write_csv_to_redis as loader

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="m2-code-store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {release()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the lookup API")
    add_logging_arguments(run)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    run.add_argument("--threads", type=int, default=2, help="threads per worker (default 2)")
    run.add_argument("--server", choices=("granian", "gunicorn"), default="granian",
                     help="WSGI server (default granian: about twice gunicorn's throughput here, see bench/)")
    run.add_argument("--debug", action="store_true", help="Flask's development server with the debugger (never in production)")
    run.set_defaults(func=serve)
    load = commands.add_parser("load", help="load a LAS export (same as write_csv_to_redis)",
                               description=loader.DESCRIPTION, epilog=loader.EPILOG)
    loader.add_arguments(load)
    load.set_defaults(func=loader.run, check=lambda args: loader.check_arguments(load, args))
    for name, func, text in (("stats", stats, "record count and generation of the store"),
                             ("stop-embedded", stop_embedded, "stop the embedded local Redis")):
        command = commands.add_parser(name, help=text)
        add_logging_arguments(command)
        command.set_defaults(func=func)
    args = parser.parse_args(argv)
    if getattr(args, "check", None):
        args.check(args)
    if args.func is not loader.run:  # the loader sets its logging up itself
        setup_logging("m2_code_store", verbose=args.verbose, quiet=args.quiet, log_file=args.log_file)
    return args.func(args)



if __name__ == "__main__":
    sys.exit(main())
