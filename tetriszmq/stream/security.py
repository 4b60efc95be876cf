"""CURVE encryption and authentication for the trainer's sockets, and the loopback rule.

A trainer with a CURVE secret key encrypts both its PUB and REP sockets and
accepts only clients whose public key file is in the allow folder (checked by
pyzmq's ZAP authenticator). Clients (viewer, `tetriszmq ctl`) present their own
key pair and the trainer's public key. Without CURVE, binding anything but a
loopback address is refused unless the user says ``--insecure``.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85


class SecurityError(ValueError):
    """Keys that cannot be used, or an exposure the user did not ask for."""


ALLOWED, ALLOWED_TRAINERS = "allowed", "allowed-trainers"  # the folders `make_keys` fills


@dataclass(frozen=True)
class MadeKeys:
    """What `make_keys` did: the key files it wrote, and the names whose existing pair it kept."""

    written: list[Path]
    kept: list[str]


def make_keys(directory: Path, names: tuple[str, ...] = ("trainer", "client"), trainers: tuple[str, ...] = ()
              ) -> MadeKeys:
    """Create key pairs ``<name>.key`` / ``<name>.key_secret``, the server's first, for the names that have none.

    A name whose pair is already in ``directory`` keeps it: a new pair would cut off every node and
    client holding the old one, so running this again only adds the names that are missing. The
    clients' public keys go to ``allowed/``; those of ``trainers`` (trainers dialling out to a relay)
    to ``allowed-trainers/``, the relay's separate folder for its trainers side (a key already there
    is left as it is). Half a pair is a `SecurityError`: this cannot tell which half is current.
    """
    directory.mkdir(parents=True, exist_ok=True)
    made = MadeKeys([], [])
    for name in (*names, *trainers):
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if public.exists() and secret.exists():
            made.kept.append(name)
        elif public.exists() or secret.exists():
            half, other = (public, secret) if public.exists() else (secret, public)
            raise SecurityError(f"{half} exists without {other.name}: move it away to make a new pair for {name}")
        else:
            zmq.auth.create_certificates(directory, name)
            made.written.extend((public, secret))
        if name != names[0]:
            allowed = directory / (ALLOWED_TRAINERS if name in trainers else ALLOWED) / public.name
            allowed.parent.mkdir(exist_ok=True)
            if not allowed.exists():
                shutil.copy(public, allowed)
    return made


def is_loopback(endpoint: str) -> bool:
    """True for ``tcp://127.x.x.x:P``, ``tcp://localhost:P``, ``tcp://[::1]:P``, ipc:// and inproc://."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: not provably loopback


SECRET_SUFFIX = "_secret"  # `make_keys`' (and zmq.auth's) pair: NAME.key public, NAME.key_secret both halves


def _load(path: Path, option: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """The key pair in ``path``, given as ``option``: a secret key where one is needed, and only there.

    zmq.auth reads the public half of a secret key file as readily as a public key file, so a server's
    secret file given where its public key goes would work, and the secret would be copied around as
    if it were public: refused, as is a public file where the caller's own secret key goes.
    """
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{option}: cannot read CURVE key {path}: {exc}") from None
    if secret and secret_key is None:
        pair = f" ({path}{SECRET_SUFFIX})" if path.name.endswith(".key") else ""
        raise SecurityError(f"{option} {path} holds no secret key (use the .key_secret file of the pair{pair})")
    if not secret and secret_key is not None:
        public_file = f" ({path.name.removesuffix(SECRET_SUFFIX)})" if path.name.endswith(SECRET_SUFFIX) else ""
        raise SecurityError(f"{option} {path} is a secret key file: give the public key file{public_file} instead; "
                            "a secret key stays on the machine it belongs to")
    for half, key in (("public", public), ("secret", secret_key)):
        if key is not None and not _is_z85_key(key):
            raise SecurityError(f"{option} {path}: its {half} key is not a CURVE key (40 Z85 characters); "
                                "make a new pair with `tetriszmq keys`")
    return public, secret_key


def _is_z85_key(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):
        return False


@dataclass
class ServerCurve:
    """The trainer's side: its key pair and the folder of allowed client keys.

    ``domain``: the ZAP domain of the sockets `apply` sets up; with more than one, each socket is
    judged by its own domain's folder only. ``option`` names the folder in errors, as the user gave it.
    """

    secret_key_file: Path
    allow_dir: Path
    domain: str = "*"
    option: str = "--curve-allow"
    _said_empty: bool = field(default=False, init=False, repr=False, compare=False)  # the empty folder's warning, once

    def __post_init__(self) -> None:
        self.secret_key_file, self.allow_dir = Path(self.secret_key_file), Path(self.allow_dir)  # str given in Python

    def load(self) -> None:
        """Read the key pair and check the allow folder: a `SecurityError` saying which is unusable.

        Called by `start`, and before anything is made by whoever wants bad key files to be bad input.
        """
        if not self.allow_dir.is_dir():
            raise SecurityError(f"{self.option} {self.allow_dir}: not a folder of client public keys")
        self.public, self.secret = _load(self.secret_key_file, "--curve-secret-key", secret=True)
        if not (self._said_empty or any(self.allow_dir.glob("*.key"))):
            self._said_empty = True  # the broker process loads its copy of this again
            print(f"tetriszmq: WARNING: {self.option} {self.allow_dir} holds no public key (*.key): no client can "
                  "connect until one is added there (`tetriszmq keys`) and the trainer (or the next learn()) starts",
                  file=sys.stderr)

    def start(self, ctx: zmq.Context, auth: ThreadAuthenticator | None = None) -> ThreadAuthenticator:
        """Start the ZAP authenticator that admits only the allowed client keys (or add this domain to ``auth``)."""
        self.load()
        if auth is None:
            auth = ThreadAuthenticator(ctx)
            auth.start()
        auth.configure_curve(domain=self.domain, location=str(self.allow_dir))
        return auth

    def apply(self, sock: zmq.Socket, endpoint: str = "") -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        if self.domain != "*":
            sock.zap_domain = self.domain.encode()


@dataclass
class RelayCurve:
    """The relay's key pair, and whom each side lets in: trainers and clients are authorised apart.

    With one folder for both, an allowed client's key could register as a trainer and take a run's
    control; here a client's key fails the trainers side's handshake, and a trainer's the viewers'.
    """

    secret_key_file: Path
    allow_clients: Path
    allow_trainers: Path

    def __post_init__(self) -> None:
        self.trainers = ServerCurve(self.secret_key_file, self.allow_trainers, "trainers", "--curve-allow-trainers")
        self.viewers = ServerCurve(self.secret_key_file, self.allow_clients, "viewers")

    def start(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """One authenticator for both sides, each side's sockets in their own ZAP domain."""
        auth = self.trainers.start(ctx)
        try:
            return self.viewers.start(ctx, auth)
        except BaseException:
            auth.stop()
            raise


@dataclass
class ClientCurve:
    """A client's side: the trainer's public key and the client's own key pair."""

    server_key_file: Path
    secret_key_file: Path

    def __post_init__(self) -> None:
        self.server_key_file, self.secret_key_file = Path(self.server_key_file), Path(self.secret_key_file)
        self.server_public, _ = _load(self.server_key_file, "--curve-server-key", secret=False)
        self.public, self.secret = _load(self.secret_key_file, "--curve-secret-key", secret=True)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


CLI_ADVICE = "Use --curve-secret-key and --curve-allow (see `tetriszmq keys`), or --insecure."


def check_exposure(endpoints: list[str], secured: bool, insecure: bool, advice: str = CLI_ADVICE,
                   action: str = "bind") -> None:
    """Refuse to bind (or ``action``: connect to) beyond loopback without CURVE, unless ``insecure``; then warn.

    ``advice`` says how to secure it or override, in the caller's terms (flags or arguments).
    """
    exposed = [e for e in endpoints if not is_loopback(e)]
    if not exposed or secured:
        return
    if not insecure:
        raise SecurityError(
            f"refusing to {action} {', '.join(exposed)} without CURVE: anyone on the network could watch and "
            f"stop training. {advice}")
    print(f"tetriszmq: WARNING: {', '.join(exposed)} is reachable from the network, unencrypted and "
          "unauthenticated (insecure)", file=sys.stderr)
