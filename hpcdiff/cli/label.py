"""``hpcdiff label JOB.toml``: label the run's frames in a browser, with active learning.

Serves a page on this machine (127.0.0.1 by default) showing one frame at a time: the raw
frame, the image the CNN sees and a large background-removed view with a contrast slider,
with the frame's file and event.  Keys: one per class (binary jobs: ``d`` diffuse, ``n``
non-diffuse; class targets: ``0`` .. ``K-1``), ``u`` or Backspace to undo, ``s`` to skip.

Every answer is saved at once to the labels file (``--labels``; default ``[experiment]
labels``, else ``<output.dir>/labels.csv``; ``.csv`` writes CSV ``file,index,label``,
any other name hpcdiff's HDF5 labels file).  Stop with Ctrl-C and start again to go on
where you stopped; several pages (or servers) may label the same file at once.

Once every class has 3 labels, the frames the model is least sure of come first, and the
page shows a cross-validated accuracy with its 95 % interval.  Features come from
``<output.dir>/features.h5`` (``hpcdiff features JOB.toml``) or are computed in the
background with the job's ``[features]`` settings.

On a cluster, run it on the login node and open the page through an SSH tunnel from your
own machine (the command prints the line to use).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import socket
import sys
from pathlib import Path

from hpcdiff.config import JobConfig, load_job
from hpcdiff.errors import ConfigError

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label frames in a browser page, with active learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file (frames, geometry, preprocessing)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to serve on (default {DEFAULT_PORT}; 0: any free port)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--labels",
        metavar="PATH",
        default=None,
        help="labels file (.csv: CSV; else HDF5); default [experiment] labels, "
        "else <output.dir>/labels.csv",
    )
    p.add_argument(
        "--features",
        metavar="PATH",
        default=None,
        help="features file (default <output.dir>/features.h5 where it exists)",
    )
    p.add_argument(
        "--classes", default=None, help="comma-separated class names for [learn] target = 'classes'"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument(
        "--no-compute",
        action="store_true",
        help="do not compute missing features (random order for those frames)",
    )
    p.set_defaults(func=run)  # fmt: skip


def _check_inputs(job: JobConfig) -> None:
    if job.simulate is not None:
        return
    for key in ("geometry", "stream", "pedestal", "gain"):
        value = getattr(job.experiment, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{job.source}: [experiment.{key}] file {value} does not exist")


def tunnel_hint(port: int) -> str:
    """The SSH command that forwards ``port`` of this host to the user's own machine."""
    return f"ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{socket.getfqdn()}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from hpcdiff.label import open_labeller
    from hpcdiff.label.server import make_server

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # the labels file may not exist yet: frames and other inputs are checked here instead
    job = load_job(args.job, check_files=False)
    _check_inputs(job)
    names = tuple(n.strip() for n in args.classes.split(",")) if args.classes else None
    try:
        labeller = open_labeller(
            job, labels=args.labels, features=args.features, class_names=names,
            seed=args.seed, compute_features=not args.no_compute,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"{args.job}: {exc}") from None
    try:
        server = make_server(labeller.app, host=args.host, port=args.port)
    except OSError as exc:
        labeller.close()
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
            "choose another --port (or --port 0 for any free one)"
        ) from None
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    s = labeller.session
    print(f"hpcdiff label: {s.store.path} ({len(s.labels)} of {len(s.frame_ids)} frames "
          f"labelled; classes {', '.join(s.scheme.class_names)})")  # fmt: skip
    if labeller.features_note:
        print(f"hpcdiff label: {labeller.features_note}")
    print(f"hpcdiff label: open http://{shown}:{port}/  (Ctrl-C to stop)")
    print(f"hpcdiff label: from your own machine: {tunnel_hint(int(port))}"
          f"  then open http://127.0.0.1:{port}/")  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hpcdiff label: warning: listening on {host}: anyone who can reach this "
              "machine can label", file=sys.stderr)  # fmt: skip
    sys.stdout.flush()
    # SIGINT too: a shell starts background jobs with SIGINT ignored
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        labeller.close()
        print(f"hpcdiff label: stopped; {len(s.labels)} labels in {s.store.path}")
    return 0
