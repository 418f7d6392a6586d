"""``m2-code-store``: serve the lookup API, load an export, show the store, look barcodes up, stop the embedded Redis.

    m2-code-store serve [--host H] [--port P] [--workers N] [--server granian|gunicorn] [--access-log] [--debug]
    m2-code-store load FILE.csv [BATCHSIZE] [--replace] …   (the same as write_csv_to_redis)
    m2-code-store stats
    m2-code-store lookup BARCODE…
    m2-code-store stop-embedded
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack

import redis

from m2_code_store.barcodes import BarcodeError, parse_barcodes
from m2_code_store.cluster import code_store
from m2_code_store.config import (
    StoreTarget,
    connect,
    connect_store,
    describe_error,
    embedded_note,
    open_store,
    resolve_target,
)
from m2_code_store.embedded import EmbeddedServerError, stop_local_server
from m2_code_store.serving import (
    METRICS_DIR_VAR,
    SERVERS,
    check_address,
    metrics_dir,
    port_claimed,
    server_command,
    supervise,
)
from m2_code_store.store import CodeStore
from toolconfig import ConfigError, add_logging_arguments, release
from toolconfig.logs import setup_logging

log = logging.getLogger("m2_code_store")


def serve(args: argparse.Namespace) -> int:
    """Run the API; check the store, the settings and the address first, so a bad one fails here, once."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked before the server runs: nothing to reload yet
    with ExitStack() as claim:  # this serve's claim on the port, held until it returns (see port_claimed)
        try:
            target = resolve_target()
            check_app_settings(os.environ)
            check_address(args.host, args.port)
            claim.enter_context(port_claimed(args.host, args.port))
            if target.source == "embedded":
                connect(target).close()  # starts the embedded server once, before the workers fork
            else:
                check_store(target)
        except (ConfigError, EmbeddedServerError) as exc:
            log.error("%s", exc)
            return 2
        except KeyboardInterrupt:
            log.warning("interrupted before the server started")
            return 130
        return _serve(args, target)


def _serve(args: argparse.Namespace, target: StoreTarget) -> int:
    """Start the server (the checks passed) and supervise it until it stops; serve's exit status."""
    if note := embedded_note(target):
        log.warning("%s", note)
        os.environ["M2_STORE"] = "embedded"  # the workers, which have no terminal, resolve the same store
    log.info("serving the M2 customer code API on http://%s:%d (store: %s)", args.host, args.port, target.shown)
    if args.debug:
        from werkzeug.debug import get_pin_and_cookie_name

        from m2_code_store.api import create_app

        app = create_app()
        # No reloader: it would run this command again in a child, whose checks find the port taken.
        # Without it werkzeug does not print the debugger's PIN, which its console asks for: printed
        # here, on standard output as werkzeug prints it, not logged (no tool logs a secret).
        pin, _ = get_pin_and_cookie_name(app)
        if pin:
            log.warning("the debugger is on: its console runs any Python code for whoever has its PIN")
            print(f" * Debugger PIN: {pin}", flush=True)
        else:
            log.warning("the debugger is on with no PIN (WERKZEUG_DEBUG_PIN=off): it runs any Python code for "
                        "whoever reaches it")
        app.run(host=args.host, port=args.port, debug=True, use_reloader=False)
        return 0
    argv = server_command(args.server, args.host, args.port, args.workers, args.threads, access_log=args.access_log)
    try:
        with metrics_dir(os.environ) as env:
            return supervise(argv, env)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2


def check_store(target: StoreTarget) -> None:
    """Raise the ConfigError each worker would raise for a store set up wrong (M2_REDIS_CLUSTER=yes
    on a single Redis, a cluster address naming a database). A store that does not answer yet is
    no error: the API starts and answers 503 until it does."""
    try:
        connect_store(target, timeout=2).close()
    except redis.exceptions.RedisError as exc:
        log.warning("the store does not answer yet (%s): lookups answer 503 until it does",
                    describe_error(exc, target))


def check_app_settings(environ: Mapping[str, str]) -> None:
    """Raise the ConfigError each worker's create_app would raise for a bad setting (M2_MAX_BARCODES,
    M2_RESPONSE_BODY, M2_HEALTH_MAX_AGE, an operator's PROMETHEUS_MULTIPROC_DIR), so it is said once."""
    # serve counts nothing itself: imported without the multiprocess directory, prometheus_client
    # keeps serve's (unused) metrics in memory rather than writing files for serve's pid there.
    hidden = {name: os.environ.pop(name) for name in (METRICS_DIR_VAR, METRICS_DIR_VAR.lower()) if name in os.environ}
    try:
        from m2_code_store import metrics
        from m2_code_store.api import _max_age, _max_barcodes, _response_body
    finally:
        os.environ.update(hidden)
    _max_barcodes(environ.get("M2_MAX_BARCODES", ""))
    _response_body(environ.get("M2_RESPONSE_BODY", ""))
    _max_age(environ.get("M2_HEALTH_MAX_AGE", ""))
    metrics.check_environment(dict(environ))


def stats(_: argparse.Namespace) -> int:
    """Print the store's record count and generation as JSON."""

    def show(target: StoreTarget, store: CodeStore) -> int:
        print(json.dumps({"store": target.shown, **store.stats()}))
        return 0

    return with_store(show)


def lookup(args: argparse.Namespace) -> int:
    """Print each barcode's customer code, read from the store: 0 all found, 1 some unknown."""
    try:
        barcodes = parse_barcodes(args.barcodes, limit=sys.maxsize)
    except BarcodeError as exc:
        log.error("%s", exc)
        return 2

    def show(target: StoreTarget, store: CodeStore) -> int:
        codes = store.lookup(barcodes)
        width = max(map(len, barcodes))
        for barcode, code in zip(barcodes, codes, strict=True):
            print(f"{barcode:<{width}}  {code or 'not found'}")
        unknown = codes.count(None)
        if store.generation() is None:
            log.warning("%s holds no data set: load an export with m2-code-store load", target.shown)
        elif unknown:
            log.warning("%d of %d barcodes not found in %s", unknown, len(barcodes), target.shown)
        return 1 if unknown else 0

    return with_store(show)


def with_store(command: Callable[[StoreTarget, CodeStore], int]) -> int:
    """Run *command* on the configured store; a store that cannot be configured or reached is one line and exit 2."""
    target = None
    try:
        target, client = open_store(timeout=5)
        if note := embedded_note(target):
            log.warning("%s", note)
        return command(target, code_store(client))
    except (ConfigError, EmbeddedServerError) as exc:
        log.error("%s", exc)
        return 2
    except redis.exceptions.RedisError as exc:
        log.error("%s failed: %s", target.shown if target else "the store", describe_error(exc, target))
        return 2


def stop_embedded(_: argparse.Namespace) -> int:
    """Stop the embedded local Redis (its data stays in the data directory)."""
    others = ("REDIS_URL", "REDIS_ENDPOINT_ENCRYPTED", "M2_STORE")
    target = resolve_target({**{k: v for k, v in os.environ.items() if k not in others}, "M2_STORE": "embedded"})
    assert target.data_dir is not None  # M2_STORE=embedded resolves to the embedded store
    stopped = stop_local_server(target.data_dir)
    print(f"{'stopped' if stopped else 'not running:'} the embedded Redis in {target.data_dir}")
    return 0


def port_number(text: str) -> int:
    """--port: a TCP port a server can listen on."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535 (got {text!r})")
    return int(text)


def positive(text: str) -> int:
    """--workers, --threads: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2-code-store``."""
    return command(sys.argv[1:] if argv is None else argv)()


def command(argv: list[str]) -> Callable[[], int]:
    """The ``m2-code-store`` command that *argv* asks for, its arguments read and checked, ready to run."""
    from m2_code_store import write_csv_to_redis as loader

    parser = argparse.ArgumentParser(prog="m2-code-store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {release()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve the lookup API")
    add_logging_arguments(run)
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    run.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000)")
    run.add_argument("--workers", type=positive, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    run.add_argument("--threads", type=positive, default=2, help="threads per worker (default 2)")
    run.add_argument("--server", choices=SERVERS, default="granian",
                     help="WSGI server (default granian: about twice gunicorn's throughput here, see bench/); "
                          "gunicorn reads m2_code_store/gunicorn_conf.py")
    run.add_argument("--access-log", action="store_true", help="log every request on stdout (default: off)")
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
    find = commands.add_parser("lookup", help="the customer code of each barcode, read from the store (the API need not run)",
                               description="Print each BARCODE and its customer code (or 'not found'), read from the "
                                           "store. Exit status: 0 all found, 1 some not found, 2 the store cannot be "
                                           "reached or configured, or a barcode is malformed.")
    add_logging_arguments(find)
    find.add_argument("barcodes", nargs="+", metavar="BARCODE", help="a barcode, or several separated by commas")
    find.set_defaults(func=lookup)
    args = parser.parse_args(argv)
    if getattr(args, "check", None):
        args.check(args)
    if args.func is not loader.run:  # the loader sets its logging up itself
        setup_logging("m2_code_store", verbose=args.verbose, quiet=args.quiet, log_file=args.log_file)
    return lambda: args.func(args)


if __name__ == "__main__":
    sys.exit(main())
